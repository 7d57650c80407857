package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/authhook"
	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/store"
)

// auditRecorder starts the audit trail of c, nil when audit.enabled is
// false. Each subject keeps the last maxretry × 2 events of the jails that
// ban (the largest), for the longest time a decision stays relevant: a
// findtime, a bantime or, with escalation, recidive.maxtime.
func auditRecorder(c config.Config, st store.Store, jails []guard.Jail, log *slog.Logger) (*audit.Recorder, error) {
	if !c.Audit.Enabled {
		return nil, nil
	}
	au, ok := st.(store.Auditing)
	if !ok {
		return nil, fmt.Errorf("audit.enabled: store %s keeps no audit trail", c.Store.Backend)
	}
	keep, ttl := auditBounds(c, jails)
	var f *audit.File
	if c.Audit.File != "" {
		size, _ := audit.ParseSize(c.Audit.FileMaxSize) // validated
		var err error
		if f, err = audit.OpenFile(c.Audit.File, size, c.Audit.FileKeep); err != nil {
			return nil, fmt.Errorf("audit.file: %w", err)
		}
	}
	node := c.Audit.Node
	if node == "" {
		node, _ = os.Hostname()
	}
	return audit.NewRecorder(audit.Options{Node: node, Users: audit.UserMode(c.Audit.User), Store: au, File: f,
		Keep: keep, TTL: ttl, Log: log.With("part", "audit")}), nil
}

// auditBounds are the per-subject cap and the TTL of the trail.
func auditBounds(c config.Config, jails []guard.Jail) (keep int, ttl time.Duration) {
	for _, j := range jails {
		if j.BanTime <= 0 {
			continue // rate limits: not failures
		}
		keep = max(keep, 2*j.MaxRetry)
		ttl = max(ttl, j.FindTime, j.BanTime)
	}
	if c.Recidive.Window.D() > 0 && c.Recidive.Factor > 1 {
		ttl = max(ttl, c.Recidive.MaxTime.D(), c.Recidive.Window.D())
	}
	return max(keep, audit.DefaultKeep), max(ttl, time.Hour)
}

// postfixGuard names Postfix and its refusals' references to guard
// (policyd.RefGuard).
type postfixGuard struct{ *guard.Guard }

func (p postfixGuard) CheckRef(ctx context.Context, a netip.Addr, user string) (banned, ref string, err error) {
	v, err := p.CheckFrom(ctx, "postfix", "smtp", a, user)
	return v.Banned, v.Ref, err
}

// CheckProtocol names Dovecot and the login's protocol to guard
// (authhook.ProtocolGuard).
func (d dovecotGuard) CheckProtocol(ctx context.Context, a netip.Addr, user, protocol string) (authhook.CheckResult, error) {
	v, err := d.CheckFrom(ctx, "dovecot", protocol, a, user)
	return authhook.CheckResult{Refused: v.Refused, Banned: v.Banned, ByUser: v.ByUser, Failures: v.Failures,
		UserFailures: v.UserFailures, Ref: v.Ref}, err
}

// kernelLister lists this node's kernel firewall for explain.
func kernelLister(c config.Config) func(ctx context.Context) ([]firewall.Entry, error) {
	if c.Firewall.Backend == firewall.NameNone {
		return nil
	}
	return func(ctx context.Context) ([]firewall.Entry, error) {
		return firewall.List(ctx, c.Firewall.Backend, firewall.Options{})
	}
}
