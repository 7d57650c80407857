package guard

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/store"
)

// Auditor records decisions for the audit trail (*audit.Recorder). Record
// must not wait: it names the event and queues it. Implementations must be
// safe for concurrent use.
type Auditor interface {
	Record(audit.Event) (id string)
}

type originKey struct{}

type origin struct{ source, protocol string }

// WithOrigin returns ctx naming the front end or log source ("postfix",
// "dovecot", "log:...") and protocol of the calls made with it, for the
// audit trail: a refusal's event names them.
func WithOrigin(ctx context.Context, source, protocol string) context.Context {
	return context.WithValue(ctx, originKey{}, origin{source, strings.ToLower(protocol)})
}

func originOf(ctx context.Context) origin {
	o, _ := ctx.Value(originKey{}).(origin)
	return o
}

// sourceOf is the source of an event of kind reported by app: the
// context's, else what the call says (an app, else the front end that
// reports such events).
func sourceOf(ctx context.Context, kind, app string) string {
	if o := originOf(ctx); o.source != "" {
		return o.source
	}
	switch {
	case app != "":
		return "api:" + app
	case kind == EventAbuse:
		return "postfix"
	case kind == EventAuthFailure:
		return "dovecot"
	case kind == EventTOTPFailure:
		return "totp"
	}
	return ""
}

// trail is the trails an event about client a and user joins: the
// address, its prefix and the user.
func (g *Guard) trail(a netip.Addr, user string, extra ...string) []string {
	var out []string
	if a.IsValid() {
		sj := g.subjectsOf(a, user)
		out = append(out, sj.host)
		if sj.prefix != sj.host {
			out = append(out, sj.prefix)
		}
		if sj.user != "" {
			out = append(out, sj.userSubj)
		}
	} else if u := normUser(user); u != "" {
		out = append(out, userSubject(u))
	}
	for _, s := range extra {
		if s != "" && !contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// failureNote gathers what event() did, for its audit events.
type failureNote struct {
	jails  []string
	count  int
	spared string
}

func (n *failureNote) add(jail string, count int, spared bool) {
	n.jails = append(n.jails, jail)
	n.count = max(n.count, count)
	if spared {
		n.spared = "shared-address"
	}
}

// auditFailure records a counted failure and the bans it made.
func (g *Guard) auditFailure(ctx context.Context, kind string, a netip.Addr, user, protocol, app string, n *failureNote, bans []store.Ban) {
	if g.audit == nil || len(n.jails) == 0 {
		return
	}
	src := sourceOf(ctx, kind, app)
	base := audit.Event{Source: src, Event: kind, Protocol: strings.ToLower(protocol), Addr: a.String(), User: user}
	e := base
	e.Kind, e.Jails, e.Count, e.Spared, e.Subjects = audit.KindFailure, n.jails, n.count, n.spared, g.trail(a, user)
	g.audit.Record(e)
	for _, b := range bans {
		e := base
		g.banEvent(&e, b)
		e.Subjects = g.trail(a, user, b.Subject)
		g.audit.Record(e)
	}
}

func (g *Guard) banEvent(e *audit.Event, b store.Ban) {
	e.Kind, e.Jail, e.Subject, e.Nth, e.Reason = audit.KindBan, b.Jail, b.Subject, b.Nth, b.Reason
	e.BanTime, e.Expires = b.Expires.Sub(b.Created).Round(time.Second).String(), b.Expires.UTC()
	if j, ok := g.byName[b.Jail]; ok {
		e.Count = j.MaxRetry
	}
}

// Refusals of one banned subject through one source within refusalEvery
// make one audit event; the others carry its id: a banned client that
// keeps knocking would otherwise fill the trail (and the store) with
// copies. refusalRefsMax bounds the ids remembered.
const (
	refusalEvery   = time.Minute
	refusalRefsMax = 10_000
)

type refusalRef struct {
	id string
	at time.Time
}

// refusals remembers the latest refusal event per banned subject and source.
type refusals struct {
	mu sync.Mutex
	m  map[string]refusalRef
}

// auditRefusal records a refusal by ban b and returns its id ("" when not
// auditing).
func (g *Guard) auditRefusal(o origin, a netip.Addr, user string, b store.Ban) string {
	if g.audit == nil {
		return ""
	}
	key, now := o.source+"|"+b.Jail+"|"+b.Subject, g.now()
	r := &g.refusals
	r.mu.Lock()
	if ref, ok := r.m[key]; ok && now.Sub(ref.at) < refusalEvery && !now.Before(ref.at) {
		r.mu.Unlock()
		return ref.id
	}
	r.mu.Unlock()
	id := g.audit.Record(audit.Event{Kind: audit.KindRefusal, Source: o.source, Protocol: o.protocol,
		Addr: a.String(), User: user, Jail: b.Jail, Subject: b.Subject, Reason: b.Reason,
		Subjects: g.trail(a, user, b.Subject)})
	r.mu.Lock()
	if r.m == nil || len(r.m) >= refusalRefsMax {
		r.m = make(map[string]refusalRef)
	}
	r.m[key] = refusalRef{id, now}
	r.mu.Unlock()
	return id
}

// auditAdmin records a ban or unban made by an administrator.
func (g *Guard) auditAdmin(kind audit.Kind, b store.Ban, prefix netip.Prefix) {
	if g.audit == nil {
		return
	}
	e := audit.Event{Source: "admin"}
	g.banEvent(&e, b)
	e.Kind = kind
	if kind == audit.KindUnban {
		e.BanTime, e.Expires, e.Count = "", time.Time{}, 0
	}
	if prefix.IsValid() && prefix.IsSingleIP() {
		e.Addr = prefix.Addr().String()
	}
	e.Subjects = []string{b.Subject}
	if e.Addr != "" && netSubject(g.prefixes.of(prefix.Addr())) != b.Subject {
		e.Subjects = append(e.Subjects, netSubject(g.prefixes.of(prefix.Addr())))
	}
	g.audit.Record(e)
}
