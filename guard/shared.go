package guard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"time"

	"github.com/mailguard/mailguard/store"
)

// SharedRule is the safety net for shared addresses: an address (its
// prefix, prefix.ipv4/ipv6) from which at least MinUsers distinct users
// logged in successfully within Window is shared (a webmail, a proxy, a big
// NAT), and jails keyed by address (ip, prefix) never ban it: its failures
// are still counted (status shows them), but reaching maxretry bans nobody.
// Jails keyed by user or user+prefix still ban the users that fail there.
// Bans made by hand (mailguard ban) still apply. The counts live in the
// store (store.Sharing), so with Redis every node agrees.
type SharedRule struct {
	MinUsers int           // zero: the rule is off
	Window   time.Duration // zero: DefaultSharedWindow
}

// Defaults of the shared-address rule (safety.shared_address.*): five
// distinct users in a day make an address shared. A family behind one
// router stays below; a webmail, an office or a carrier NAT is over.
const (
	DefaultSharedMinUsers = 5
	DefaultSharedWindow   = 24 * time.Hour
)

type sharedness int8

const (
	sharedUnknown sharedness = iota
	sharedNo
	sharedYes
)

func (g *Guard) setShared(r SharedRule) error {
	if r.MinUsers < 0 || r.Window < 0 {
		return fmt.Errorf("guard: shared address rule: min users %d and window %v must not be negative", r.MinUsers, r.Window)
	}
	if r.Window == 0 {
		r.Window = DefaultSharedWindow
	}
	g.shared = r
	if r.MinUsers == 0 {
		return nil
	}
	sh, ok := g.st.(store.Sharing)
	if !ok {
		return fmt.Errorf("guard: shared address rule: the store (%T) cannot count users per address", g.st)
	}
	g.sharing = sh
	return nil
}

// sharedSubject is what the rule counts users of: the client's prefix.
func (g *Guard) sharedSubject(a netip.Addr) string { return netSubject(g.prefixes.of(a)) }

// sharedState tells whether a (canonical) is a shared address. A store
// error counts as not shared (and is logged): bans work as without the rule.
func (g *Guard) sharedState(ctx context.Context, a netip.Addr) sharedness {
	n, err := g.sharing.Sharers(ctx, g.sharedSubject(a), g.shared.Window)
	if err != nil {
		if ok, n := g.sharedLogged.Allow("store-error", g.now()); ok && !errors.Is(err, context.Canceled) {
			g.log.Warn("shared address rule: store failed, the address is treated as not shared", "err", err, "suppressed", n)
		}
		return sharedNo
	}
	if n >= g.shared.MinUsers {
		return sharedYes
	}
	return sharedNo
}

// share records a successful login of user from a (canonical) for the rule.
func (g *Guard) share(ctx context.Context, a netip.Addr, user string) error {
	u := normUser(user)
	if g.sharing == nil || u == "" {
		return nil
	}
	sub := g.sharedSubject(a)
	n, err := g.sharing.Share(ctx, sub, u, g.shared.Window, g.shared.MinUsers)
	if err != nil {
		return fmt.Errorf("guard: shared address rule: %w", err)
	}
	if n >= g.shared.MinUsers {
		if ok, _ := g.sharedLogged.AllowEvery("shared|"+sub, g.now(), g.shared.Window); ok {
			g.log.Info("shared address: never banned by address", "key", sub, "users", n, "window", g.shared.Window)
		}
	}
	return nil
}

// spared logs (once per subject per window) that a jail did not ban a
// shared address at maxretry.
func (g *Guard) spared(j *Jail, subject string, count int) {
	if ok, n := g.sharedLogged.AllowEvery("spared|"+j.Name+"|"+subject, g.now(), g.shared.Window); ok {
		g.log.Info("not banned: shared address", "jail", j.Name, "key", subject, "count", count, "suppressed", n)
	}
}

// SharedAddresses lists the shared addresses (prefixes) and how many
// distinct users logged in from each within the rule's window (at most
// MinUsers are counted). Nil when the rule is off.
func (g *Guard) SharedAddresses(ctx context.Context) (map[string]int, SharedRule, error) {
	if g.sharing == nil {
		return nil, g.shared, nil
	}
	m, err := g.sharing.Shared(ctx, g.shared.Window, g.shared.MinUsers)
	if err != nil {
		return nil, g.shared, fmt.Errorf("guard: shared addresses: %w", err)
	}
	return m, g.shared, nil
}

// Event kinds a web app may report (Report). EventAuthFailure is counted by
// the jails naming it; EventAuthSuccess makes a known device and counts the
// user for the shared-address rule, like a successful Dovecot login.
const EventAuthSuccess = "auth-success"

// ReportKinds returns the event kinds Report takes, in a new slice.
func ReportKinds() []string { return []string{EventAuthFailure, EventAuthSuccess} }

// ReportProtocol is the protocol of events reported by web apps: what a
// jail's protocols and the per-protocol status see.
const ReportProtocol = "http"

var appName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ValidApp reports whether name may name a web app (jails.NAME.apps, an
// API event's app): 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a
// letter or digit.
func ValidApp(name string) bool { return appName.MatchString(name) }

// Report is a login reported by a web app (through the API).
type Report struct {
	Kind string     // one of ReportKinds
	Addr netip.Addr // the browser's address
	User string     // the login, may be empty
	App  string     // the app's name (ValidApp), may be empty
}

// Reported is what a Report did.
type Reported struct {
	Jails []string    // the jails that counted it
	Bans  []store.Ban // the bans it made
}

// ErrReport marks a Report guard cannot take (unknown kind, bad app name,
// invalid address): match it with errors.Is.
var ErrReport = errors.New("bad report")

// Report counts a web app's report.
func (g *Guard) Report(ctx context.Context, r Report) (Reported, error) {
	if !Canon(r.Addr).IsValid() {
		return Reported{}, fmt.Errorf("%w: invalid address", ErrReport)
	}
	if r.App != "" && !ValidApp(r.App) {
		return Reported{}, fmt.Errorf("%w: app %q: want 1 to 64 of a-z, 0-9, '.', '_', '-'", ErrReport, r.App)
	}
	switch r.Kind {
	case EventAuthFailure:
		out := Reported{Jails: []string{}}
		bans, err := g.event(ctx, r.Kind, r.Addr, r.User, ReportProtocol, "", r.App, &out.Jails)
		out.Bans = bans
		return out, err
	case EventAuthSuccess:
		return Reported{Jails: []string{}}, g.Succeed(ctx, r.Addr, r.User)
	}
	return Reported{}, fmt.Errorf("%w: unknown kind %q", ErrReport, r.Kind)
}
