package guard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/store"
)

// Explanation is what `mailguard explain` tells about a target: the
// decisions the audit trail holds on it, the bans in force, and the rules
// that spared it.
type Explanation struct {
	Target string
	Kind   string // "address", "prefix", "user" or "id"
	// Event is the event an id names (Kind "id").
	Event    *audit.Event
	Subjects []string      // the trails read
	Events   []audit.Event // their events, oldest first, each once
	Bans     []store.Ban   // active bans on Subjects
	Jails    []Jail        // the jails the events and bans name
	Recidive store.Recidive
	// Ignored: the target is inside ignoreip (never counted or banned).
	Ignored bool
	// Known lists "user|prefix" pairs of the events (plain logins only)
	// that are known devices now: a user ban does not refuse them.
	Known []string
}

// ErrNoAudit says the store keeps no audit trail.
var ErrNoAudit = errors.New("the store keeps no audit trail")

// Explain gathers the Explanation of target: an address, a prefix, a login
// or an audit id.
func (g *Guard) Explain(ctx context.Context, target string) (Explanation, error) {
	au, ok := g.st.(store.Auditing)
	if !ok {
		return Explanation{}, ErrNoAudit
	}
	x := Explanation{Target: target, Recidive: g.recidive}
	var addr netip.Addr
	target = strings.TrimSpace(target)
	if audit.ValidID(target) {
		b, err := au.Record(ctx, target)
		if err != nil {
			return Explanation{}, fmt.Errorf("guard: explain: %w", err)
		}
		if b != nil {
			e, err := audit.Unmarshal(b)
			if err != nil {
				return Explanation{}, fmt.Errorf("guard: explain: %w", err)
			}
			x.Kind, x.Event = "id", &e
			if a, err := netip.ParseAddr(e.Addr); err == nil {
				addr = Canon(a)
				x.Subjects = g.trail(addr, "")
			}
			if e.Subject != "" && !contains(x.Subjects, e.Subject) {
				x.Subjects = append(x.Subjects, e.Subject)
			}
		}
	}
	if x.Kind == "" {
		subject, prefix, err := g.ParseTarget(target)
		if err != nil {
			return Explanation{}, err
		}
		switch {
		case !prefix.IsValid():
			x.Kind = "user"
			x.Subjects = []string{subject}
		case prefix.IsSingleIP():
			x.Kind = "address"
			addr = prefix.Addr()
			x.Subjects = g.trail(addr, "")
			x.Ignored = g.Ignored(addr)
		default:
			x.Kind = "prefix"
			x.Subjects = []string{subject}
			x.Ignored = g.IgnoredPrefix(prefix)
		}
	}
	seen := map[string]bool{}
	for _, sub := range x.Subjects {
		recs, err := au.Trail(ctx, sub)
		if err != nil {
			return Explanation{}, fmt.Errorf("guard: explain: %w", err)
		}
		for _, r := range recs {
			e, err := audit.Unmarshal(r)
			if err != nil || seen[e.ID] {
				continue // a record of a newer format, or read twice
			}
			seen[e.ID] = true
			x.Events = append(x.Events, e)
		}
	}
	sort.SliceStable(x.Events, func(i, j int) bool { return x.Events[i].Time.Before(x.Events[j].Time) })
	ans, err := g.st.Check(ctx, store.Query{Subjects: x.Subjects})
	if err != nil {
		return Explanation{}, fmt.Errorf("guard: explain: %w", err)
	}
	x.Bans = ans.Bans
	sort.Slice(x.Bans, func(i, j int) bool { return x.Bans[i].Subject+x.Bans[i].Jail < x.Bans[j].Subject+x.Bans[j].Jail })
	if x.Known, err = g.knownPairs(ctx, x, addr); err != nil {
		return Explanation{}, err
	}
	names := map[string]bool{}
	for _, e := range x.Events {
		names[e.Jail] = true
		for _, j := range e.Jails {
			names[j] = true
		}
	}
	for _, b := range x.Bans {
		names[b.Jail] = true
	}
	for _, j := range g.jails {
		if names[j.Name] {
			x.Jails = append(x.Jails, j)
		}
	}
	return x, nil
}

// maxKnownLookups bounds the known-device lookups of one Explain.
const maxKnownLookups = 16

// knownPairs tells which (user, prefix) pairs of the explanation are known
// devices: the target user's from each address of its events, or each
// plain user of the events from addr's prefix.
func (g *Guard) knownPairs(ctx context.Context, x Explanation, addr netip.Addr) ([]string, error) {
	type pair struct {
		user string
		a    netip.Addr
	}
	var pairs []pair
	add := func(user string, a netip.Addr) {
		p := pair{normUser(user), Canon(a)}
		if p.user == "" || strings.HasPrefix(p.user, "h:") || !p.a.IsValid() || slices.Contains(pairs, p) || len(pairs) >= maxKnownLookups {
			return
		}
		pairs = append(pairs, p)
	}
	for _, e := range x.Events {
		a, err := netip.ParseAddr(e.Addr)
		if err != nil {
			continue
		}
		switch {
		case x.Kind == "user":
			add(strings.TrimPrefix(x.Subjects[0], "user:"), a)
		case addr.IsValid():
			add(e.User, addr)
		}
	}
	var out []string
	for _, p := range pairs {
		key := g.knownKey(p.a, p.user)
		ans, err := g.st.Check(ctx, store.Query{Known: key})
		if err != nil {
			return nil, fmt.Errorf("guard: explain: %w", err)
		}
		if ans.Known {
			out = append(out, p.user+"|"+g.prefixes.of(p.a).String())
		}
	}
	return out, nil
}
