package guard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mailguard/mailguard/store"
)

// The blast-radius guard (safety.max_bans_per_minute): a mistake (a
// maxretry of 1, a webmail host missed by the shared-address rule, a broken
// log filter) can ban a large part of a site's users in minutes. Past
// MaxBansPerMinute bans within a minute, site-wide, new bans are counted and
// logged but held back as pending: not applied, not sent to the firewall,
// until an administrator confirms them (Confirm, `mailguard confirm`) or
// the rate drops back below the limit (Drain, every DrainEvery): then they
// are released oldest first, at most the limit per minute. A held ban keeps
// its place: it ends when it would have ended had it been applied at once,
// and one whose bantime ran out meanwhile is dropped unapplied. The state
// lives in the store (store.Holding), so with Redis every node agrees.
// Manual bans (mailguard ban) are never held.

// DefaultMaxBansPerMinute is safety.max_bans_per_minute's default: a busy
// site under a botnet sees a few dozen new attackers a minute; sixty a
// minute, site-wide, is over that and under what a mistake does.
const DefaultMaxBansPerMinute = 60

// HoldSpan is the blast-radius guard's window.
const HoldSpan = time.Minute

// DrainEvery is how often the daemon should call Drain.
const DrainEvery = 5 * time.Second

// HoldMetrics is an optional ability of Config.Metrics, found by type
// assertion: counting the bans held back and what became of them.
type HoldMetrics interface {
	// BanHeld counts a ban of jail held back.
	BanHeld(jail string)
	// HeldReleased counts held bans released: how is "drained",
	// "confirmed" or "expired".
	HeldReleased(how string, n int)
}

// setHold turns the blast-radius guard on when limit > 0.
func (g *Guard) setHold(limit int) error {
	if limit < 0 {
		return fmt.Errorf("guard: max bans per minute %d must not be negative", limit)
	}
	if limit == 0 {
		return nil
	}
	ho, ok := g.st.(store.Holding)
	if !ok {
		return fmt.Errorf("guard: blast-radius guard: the store (%T) cannot hold bans back", g.st)
	}
	g.holding, g.holdLimit = ho, limit
	if m, ok := g.metrics.(HoldMetrics); ok {
		g.holdMetrics = m
	}
	return nil
}

// holdHit records h through the blast-radius guard: the failure is counted
// without a ban and, when it reaches maxretry, the ban is admitted or held.
// An admitted ban is made by a second, Settle Hit (atomic in the store as
// always), which counts no failure again; with MaxRetry unchanged, a ban a
// concurrent request made meanwhile (which cleared the window) is not made
// twice.
func (g *Guard) holdHit(ctx context.Context, j *Jail, h store.Hit) (store.HitResult, error) {
	count := h
	count.BanTime = 0
	r, err := g.st.Hit(ctx, count)
	if err != nil || r.Count < h.MaxRetry {
		return r, err
	}
	ok, err := g.holding.Admit(ctx, store.Held{Jail: j.Name, Subject: h.Subject, BanTime: h.BanTime, Reason: h.Reason}, g.holdLimit, HoldSpan)
	switch {
	case errors.Is(err, context.Canceled):
		return r, err
	case errors.Is(err, store.ErrHoldFull):
		if ok, n := g.holdLogged.AllowEvery("full", g.now(), HoldSpan); ok {
			g.log.Warn("ban dropped: too many bans held back already", "jail", j.Name, "key", h.Subject, "held", store.MaxHeld, "suppressed", n)
		}
		return r, nil
	case err != nil:
		// The guard cannot tell: ban, as without it.
		g.log.Warn("blast-radius guard: store failed, banning as without the guard", "jail", j.Name, "key", h.Subject, "err", err)
	case !ok:
		if g.holdMetrics != nil {
			g.holdMetrics.BanHeld(j.Name)
		}
		if ok, n := g.holdLogged.AllowEvery(j.Name+"|"+h.Subject, g.now(), HoldSpan); ok {
			g.log.Warn("ban held: over safety.max_bans_per_minute", "jail", j.Name, "key", h.Subject,
				"count", r.Count, "limit", g.holdLimit, "suppressed", n)
		}
		return r, nil
	}
	h.Settle = true
	b, err := g.st.Hit(ctx, h)
	if err == nil {
		b.Count = r.Count // this failure's count, from the Hit that counted it
	}
	return b, err
}

// Released is what Drain or Confirm did.
type Released struct {
	Bans    []store.Ban // bans applied
	Expired int         // held bans dropped unapplied: their bantime ran out
}

// Drain releases held bans while the site-wide rate is below the limit
// (oldest first, at most the limit per minute). The daemon calls it every
// DrainEvery; any node may, at once. A no-op when the guard is off.
func (g *Guard) Drain(ctx context.Context) (Released, error) {
	if g.holding == nil {
		return Released{}, nil
	}
	hs, exp, err := g.holding.Drain(ctx, g.holdLimit, HoldSpan)
	if err != nil {
		return Released{}, fmt.Errorf("guard: drain held bans: %w", err)
	}
	return g.release(ctx, "drained", hs, exp)
}

// Confirm releases the held bans of target (an address, prefix or login;
// every held ban when empty) at once, whatever the rate: an administrator
// says they are right.
func (g *Guard) Confirm(ctx context.Context, target string) (Released, error) {
	if g.holding == nil {
		return Released{}, nil
	}
	subject := ""
	if target != "" {
		s, _, err := g.ParseTarget(target)
		if err != nil {
			return Released{}, err
		}
		subject = s
	}
	hs, exp, err := g.holding.Confirm(ctx, subject)
	if err != nil {
		return Released{}, fmt.Errorf("guard: confirm held bans: %w", err)
	}
	return g.release(ctx, "confirmed", hs, exp)
}

// release applies held bans: each for what is left of its bantime (then
// escalated as any ban), through a Settle Hit of MaxRetry 1 so that the
// store counts recidive but not the failure again.
func (g *Guard) release(ctx context.Context, how string, hs []store.Held, expired int) (Released, error) {
	var out Released
	out.Expired = expired
	var errs []error
	now := g.now()
	for _, h := range hs {
		left := h.Expires().Sub(now)
		if left <= 0 {
			out.Expired++
			continue
		}
		span := HoldSpan
		if j, ok := g.byName[h.Jail]; ok {
			span = j.FindTime
		}
		r, err := g.st.Hit(ctx, store.Hit{Jail: h.Jail, Subject: h.Subject, Span: span, MaxRetry: 1,
			BanTime: left, Recidive: g.recidive, Reason: h.Reason, Settle: true})
		if err != nil {
			errs = append(errs, fmt.Errorf("guard: release held ban of %s in %s: %w", h.Subject, h.Jail, err))
			continue
		}
		if r.Ban != nil {
			out.Bans = append(out.Bans, *r.Ban)
			if g.metrics != nil {
				g.metrics.Banned(h.Jail)
			}
			g.log.Info("ban", "jail", h.Jail, "key", r.Ban.Subject, "ttl", r.Ban.Expires.Sub(r.Ban.Created).Round(time.Second),
				"nth", r.Ban.Nth, "held", now.Sub(h.Held).Round(time.Second), "released", how)
		}
	}
	if g.holdMetrics != nil {
		if len(out.Bans) > 0 {
			g.holdMetrics.HeldReleased(how, len(out.Bans))
		}
		if out.Expired > 0 {
			g.holdMetrics.HeldReleased("expired", out.Expired)
		}
	}
	return out, errors.Join(errs...)
}

// HoldState is the blast-radius guard's state: what status and /healthz
// show.
type HoldState struct {
	Limit int          // safety.max_bans_per_minute; zero: the guard is off
	Rate  int          // bans within the last minute, site-wide (at most Limit+1)
	Held  []store.Held // held bans, oldest first
}

// Holding returns the blast-radius guard's state (zero when it is off).
func (g *Guard) Holding(ctx context.Context) (HoldState, error) {
	if g.holding == nil {
		return HoldState{}, nil
	}
	hs, err := g.holding.Held(ctx)
	if err != nil {
		return HoldState{}, fmt.Errorf("guard: held bans: %w", err)
	}
	rate, err := g.holding.Rate(ctx, HoldSpan)
	if err != nil {
		return HoldState{}, fmt.Errorf("guard: ban rate: %w", err)
	}
	return HoldState{Limit: g.holdLimit, Rate: rate, Held: hs}, nil
}

// Safety rules that spare a subject (Spare.Rule).
const (
	RuleBlastRadius   = "blast-radius"   // safety.max_bans_per_minute: the ban is held back
	RuleSharedAddress = "shared-address" // safety.shared_address: never banned by address
)

// Spare is one way a safety rule spares a subject.
type Spare struct {
	Rule    string // RuleBlastRadius or RuleSharedAddress
	Subject string // the subject spared ("net:192.0.2.7/32", "user:alice@example.org")
	// Jail is the jail whose ban is held (RuleBlastRadius); empty for
	// RuleSharedAddress, which spares every jail keyed by address.
	Jail string
	// Since is when the ban was held (RuleBlastRadius); zero otherwise.
	Since time.Time
	// Users is how many distinct users logged in from the address within
	// the rule's window (RuleSharedAddress; at most its min_users).
	Users int
	// Why is one line for people: "held back: over 60 bans per minute".
	Why string
}

// Spared tells which safety rules spare target (an address, a prefix or a
// login, as `mailguard explain` takes): each held ban of its subjects
// (RuleBlastRadius; for an address, its host and prefix subjects and any
// user+prefix subject of its prefix), and, for an address or prefix, the
// shared-address rule when it holds (RuleSharedAddress). None (nil) when no
// rule spares it or both rules are off. Safe for concurrent use.
func (g *Guard) Spared(ctx context.Context, target string) ([]Spare, error) {
	subject, prefix, err := g.ParseTarget(target)
	if err != nil {
		return nil, err
	}
	subjects := map[string]bool{subject: true}
	netPart := ""
	if prefix.IsValid() {
		p := g.prefixes.of(prefix.Addr())
		if p.Bits() < prefix.Bits() {
			subjects[netSubject(p)] = true
		} else {
			p = prefix
		}
		netPart = "|" + p.Masked().String()
	}
	var out []Spare
	if g.holding != nil {
		hs, err := g.holding.Held(ctx)
		if err != nil {
			return nil, fmt.Errorf("guard: held bans: %w", err)
		}
		for _, h := range hs {
			if subjects[h.Subject] || netPart != "" && strings.HasPrefix(h.Subject, "user+net:") && strings.HasSuffix(h.Subject, netPart) {
				out = append(out, Spare{Rule: RuleBlastRadius, Subject: h.Subject, Jail: h.Jail, Since: h.Held,
					Why: fmt.Sprintf("held back: over %d bans per minute (safety.max_bans_per_minute); mailguard confirm applies it", g.holdLimit)})
			}
		}
	}
	if g.sharing != nil && prefix.IsValid() {
		a := prefix.Addr()
		n, err := g.sharing.Sharers(ctx, g.sharedSubject(a), g.shared.Window)
		if err != nil {
			return nil, fmt.Errorf("guard: shared address rule: %w", err)
		}
		if n >= g.shared.MinUsers {
			out = append(out, Spare{Rule: RuleSharedAddress, Subject: g.sharedSubject(a), Users: n,
				Why: fmt.Sprintf("shared address: %d users logged in from it within %v (safety.shared_address): jails keyed by address never ban it", n, g.shared.Window)})
		}
	}
	return out, nil
}

// hitBan records h, through the blast-radius guard when it is on and h
// may ban.
func (g *Guard) hitBan(ctx context.Context, j *Jail, h store.Hit) (store.HitResult, error) {
	if g.holding == nil || h.BanTime <= 0 {
		return g.st.Hit(ctx, h)
	}
	return g.holdHit(ctx, j, h)
}
