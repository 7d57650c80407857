package guard

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/mailguard/mailguard/store"
)

// WidenStep is one step of adaptive IPv6 prefixes (prefix.ipv6_widen):
// when Bans distinct prefixes of the step before (the first step: the
// prefix.ipv6 prefixes, /64) inside one /Bits are banned within Window by
// a jail keyed by prefix, that jail bans the whole /Bits too. An attacker
// who owns a /56 (what many providers give a customer) and hops from /64 to
// /64 is then stopped at once instead of /64 by /64.
//
// Never wider than a prefix where any user has a known device (logged in
// successfully within known_device_ttl): widening must not lock out the
// other users of a provider's network. Nor over ignoreip. Widened bans
// reach the kernel firewall as any prefix ban (one set per length).
type WidenStep struct {
	Bits   int
	Bans   int
	Window time.Duration
}

// setWiden checks and keeps the steps.
func (g *Guard) setWiden(steps []WidenStep) error {
	if len(steps) == 0 {
		return nil
	}
	prev := g.prefixes.of(netip.IPv6Unspecified()).Bits()
	for i, s := range steps {
		if s.Bits < 16 || s.Bits >= prev || s.Bans < 2 || s.Window <= 0 {
			return fmt.Errorf("guard: ipv6 widen step %d: want bits in [16, %d), bans ≥ 2, a positive window; got %+v", i+1, prev, s)
		}
		prev = s.Bits
	}
	sh, ok := g.st.(store.Sharing)
	if !ok {
		return fmt.Errorf("guard: ipv6 widen: the store (%T) cannot record known devices per prefix", g.st)
	}
	g.widen, g.devices = slices.Clone(steps), sh
	return nil
}

// deviceSubject names what records the users with known devices inside p.
func deviceSubject(p netip.Prefix) string { return "dev:" + netSubject(p) }

// rememberWide records a known device of user (normalised) at a (canonical)
// under every widen step's prefix.
func (g *Guard) rememberWide(ctx context.Context, a netip.Addr, user string) error {
	if len(g.widen) == 0 || !a.Is6() {
		return nil
	}
	for _, s := range g.widen {
		p, _ := a.Prefix(s.Bits)
		if _, err := g.devices.Share(ctx, deviceSubject(p), user, g.knownTTL, 1); err != nil {
			return fmt.Errorf("guard: remember device in /%d: %w", s.Bits, err)
		}
	}
	return nil
}

// widenSubjects appends the widen steps' subjects of a (canonical) to q.
func (g *Guard) widenSubjects(q []string, a netip.Addr) []string {
	if len(g.widen) == 0 || !a.Is6() {
		return q
	}
	for _, s := range g.widen {
		p, _ := a.Prefix(s.Bits)
		q = append(q, netSubject(p))
	}
	return q
}

// widenBits reports whether bits is a widen step's length (ParseTarget).
func (g *Guard) widenBits(bits int) bool {
	for _, s := range g.widen {
		if s.Bits == bits {
			return true
		}
	}
	return false
}

// widened counts ban b of jail j (of client a, canonical) towards the
// widen steps and returns the wider bans it made.
func (g *Guard) widened(ctx context.Context, j *Jail, a netip.Addr, b store.Ban) []store.Ban {
	if len(g.widen) == 0 || !a.Is6() || j.Key != KeyPrefix {
		return nil
	}
	var out []store.Ban
	prev := b.Subject
	for _, s := range g.widen {
		p, _ := a.Prefix(s.Bits)
		sub := netSubject(p)
		if g.IgnoredPrefix(p) {
			return out
		}
		n, err := g.devices.Sharers(ctx, deviceSubject(p), g.knownTTL)
		if err != nil {
			g.log.Warn("ipv6 widen: store failed, not widening", "key", sub, "err", err)
			return out
		}
		if n > 0 {
			if ok, _ := g.holdLogged.AllowEvery("widen|"+sub, g.now(), s.Window); ok {
				g.log.Info("not widened: a user has a known device inside", "jail", j.Name, "key", sub)
			}
			return out
		}
		h := g.hit(j, sub, fmt.Sprintf("widened: %d bans inside /%d within %v", s.Bans, s.Bits, s.Window))
		h.Span, h.MaxRetry, h.Member = s.Window, s.Bans, prev
		r, err := g.hitBan(ctx, j, h)
		if err != nil {
			g.log.Warn("ipv6 widen: store failed", "key", sub, "err", err)
			return out
		}
		if r.Ban == nil {
			return out
		}
		out = append(out, *r.Ban)
		if g.metrics != nil {
			g.metrics.Banned(j.Name)
		}
		g.log.Info("ban", "jail", j.Name, "key", sub, "ttl", r.Ban.Expires.Sub(r.Ban.Created).Round(time.Second),
			"nth", r.Ban.Nth, "widened_from", prev, "count", r.Count)
		prev = sub
	}
	return out
}
