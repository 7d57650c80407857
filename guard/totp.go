package guard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/mailguard/mailguard/store"
)

// The TOTP second factor's policy (package totp has the codes and secrets).
//
// After a right password (Dovecot's after-auth allow) an enrolled user whose
// trust prefix is not approved is refused, and the attempt is kept as a
// pending login for the approval page. Wrong codes are failures of the totp
// jail, counted per user and per client prefix.
const (
	// TOTPJail counts wrong TOTP codes (reserved: no configured jail may
	// have this name while TOTP is on).
	TOTPJail = "totp"
	// EventTOTPFailure is the totp jail's event kind.
	EventTOTPFailure = "totp-failure"
	// DefaultPendingTTL is how long a refused login stays pending.
	DefaultPendingTTL = time.Hour
)

// DefaultTOTPJail: 5 wrong codes within 15 minutes, per user or per client
// prefix, refuse codes (and, for the prefix, logins) for 30 minutes.
var DefaultTOTPJail = Jail{Name: TOTPJail, Events: []string{EventTOTPFailure}, Key: KeyUser,
	MaxRetry: 5, FindTime: 15 * time.Minute, BanTime: 30 * time.Minute, Action: ActionRefuse}

// SecondFactor configures the TOTP policy.
type SecondFactor struct {
	// Prefix returns a client's trust prefix, what an approval covers
	// (totp.Service.PrefixOf). Nil: TOTP is off.
	Prefix func(netip.Addr) netip.Prefix
	// PendingTTL is how long a refused login stays pending; zero:
	// DefaultPendingTTL.
	PendingTTL time.Duration
}

func (g *Guard) initSecondFactor(sf SecondFactor) error {
	ts, ok := g.st.(store.TOTPStore)
	if !ok {
		return fmt.Errorf("guard: the %T store keeps no TOTP state", g.st)
	}
	g.tf, g.ts = sf, ts
	if g.tf.PendingTTL <= 0 {
		g.tf.PendingTTL = DefaultPendingTTL
	}
	g.jails = append(g.jails, DefaultTOTPJail)
	return nil
}

// CheckAfterAuth is CheckLogin for Dovecot's after-auth allow (the password
// was right). With a SecondFactor configured, the same store round trip
// tells whether the user has enrolled TOTP and the client's trust prefix is
// approved; an enrolled user from an unapproved prefix gets
// Verdict.SecondFactor, and the attempt (trust prefix, address, protocol,
// time) is kept as a pending login, one more store call. Clients inside
// ignoreip are never refused, TOTP or not.
func (g *Guard) CheckAfterAuth(ctx context.Context, a netip.Addr, user, protocol string) (Verdict, error) {
	a = Canon(a)
	o := originOf(ctx)
	if o.protocol == "" {
		o.protocol = strings.ToLower(protocol)
	}
	v, trust, err := g.checkLogin(ctx, o, a, user, true)
	if err != nil || !v.SecondFactor {
		return v, err
	}
	protocol = strings.ToLower(protocol)
	if ok, n := g.totpLog.AllowEvery(trust.String(), g.now(), time.Minute); ok {
		g.log.Info("second factor required", "remote", a, "prefix", trust, "protocol", protocol, "suppressed", n)
	}
	p := store.Pending{User: normUser(user), Prefix: trust, Addr: a, Protocol: protocol, At: g.now()}
	if err := g.ts.AddPending(ctx, p, g.tf.PendingTTL); err != nil {
		// The refusal stands; only the page's list misses this attempt.
		g.log.Warn("guard: keeping a pending login", "err", err)
	}
	return v, nil
}

// codeSubjects are the subjects the totp jail counts for a code of user
// typed from a: the user, and the client's prefix unless a is invalid or
// inside ignoreip.
func (g *Guard) codeSubjects(a netip.Addr, user string) []string {
	var subs []string
	if u := normUser(user); u != "" {
		subs = append(subs, userSubject(u))
	}
	if a = Canon(a); a.IsValid() && !g.Ignored(a) {
		subs = append(subs, netSubject(g.prefixes.of(a)))
	}
	return subs
}

// CodeRefused reports whether codes of user from a are refused: the totp
// jail bans the user or the client's prefix, or any jail bans the client.
func (g *Guard) CodeRefused(ctx context.Context, a netip.Addr, user string) (bool, error) {
	subs := g.codeSubjects(a, user)
	if len(subs) == 0 {
		return false, nil
	}
	if a = Canon(a); a.IsValid() && !g.Ignored(a) {
		if h := netSubject(hostPrefix(a)); h != subs[len(subs)-1] {
			subs = append(subs, h)
		}
	}
	ans, err := g.st.Check(ctx, store.Query{Subjects: subs})
	if err != nil {
		return false, fmt.Errorf("guard: check: %w", err)
	}
	for _, b := range ans.Bans {
		if b.Jail == TOTPJail || strings.HasPrefix(b.Subject, "net:") {
			return true, nil
		}
	}
	return false, nil
}

// CodeFailed counts a wrong code of user from a in the totp jail, per user
// and per client prefix.
func (g *Guard) CodeFailed(ctx context.Context, a netip.Addr, user string) error {
	j, ok := g.byName[TOTPJail]
	if !ok {
		return errors.New("guard: TOTP is off")
	}
	var errs []error
	var note failureNote // for the audit trail
	var bans []store.Ban
	defer func() { g.auditFailure(ctx, EventTOTPFailure, Canon(a), user, "totp", "", &note, bans) }()
	for _, s := range g.codeSubjects(a, user) {
		r, err := g.hitBan(ctx, j, g.hit(j, s, EventTOTPFailure))
		if err != nil {
			errs = append(errs, fmt.Errorf("guard: jail %s: %w", TOTPJail, err))
			continue
		}
		g.counted(TOTPJail, "totp")
		if len(note.jails) == 0 {
			note.add(TOTPJail, r.Count, false)
		}
		note.count = max(note.count, r.Count)
		if r.Ban != nil {
			bans = append(bans, *r.Ban)
			if g.metrics != nil {
				g.metrics.Banned(TOTPJail)
			}
			g.log.Info("ban", "jail", TOTPJail, "key", r.Ban.Subject, "ttl", r.Ban.Expires.Sub(r.Ban.Created).Round(time.Second), "count", r.Count)
		}
	}
	return errors.Join(errs...)
}
