package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/config"
)

// widen is prefix.ipv6_widen for guard.
func widen(c config.Config) []guard.WidenStep {
	var out []guard.WidenStep
	for _, s := range c.Prefix.IPv6Widen {
		out = append(out, guard.WidenStep{Bits: s.Bits, Bans: s.Bans, Window: s.Window.D()})
	}
	return out
}

// drainHeld releases the bans the blast-radius guard holds back as the
// rate drops, every guard.DrainEvery, until ctx ends.
func drainHeld(ctx context.Context, g *guard.Guard, log *slog.Logger) {
	if st, _ := g.Holding(ctx); st.Limit == 0 {
		return
	}
	t := time.NewTicker(guard.DrainEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r, err := g.Drain(ctx)
		if err != nil && ctx.Err() == nil {
			log.Warn("blast-radius guard: releasing held bans", "err", err)
		}
		if len(r.Bans) > 0 || r.Expired > 0 {
			log.Info("held bans released: the ban rate dropped back", "count", len(r.Bans), "expired", r.Expired)
		}
	}
}

// heldHealth adds the blast-radius guard to /healthz: degraded while bans
// are held back.
func heldHealth(next func(context.Context) error, g *guard.Guard) func(context.Context) error {
	return func(ctx context.Context) error {
		var errs []error
		if next != nil {
			errs = append(errs, next(ctx))
		}
		st, err := g.Holding(ctx)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("blast-radius guard: %w", err))
		case len(st.Held) > 0:
			errs = append(errs, fmt.Errorf("blast-radius guard: %d bans held back (%d bans in the last minute, limit %d); mailguard confirm --all applies them",
				len(st.Held), st.Rate, st.Limit))
		}
		return errors.Join(errs...)
	}
}
