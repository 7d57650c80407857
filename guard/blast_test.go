package guard

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
)

type holdCounter struct {
	mu       sync.Mutex
	held     int
	released map[string]int
	banned   int
}

func (m *holdCounter) Failure(string, string) {}
func (m *holdCounter) Banned(string)          { m.mu.Lock(); m.banned++; m.mu.Unlock() }
func (m *holdCounter) BanHeld(string)         { m.mu.Lock(); m.held++; m.mu.Unlock() }
func (m *holdCounter) HeldReleased(how string, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.released == nil {
		m.released = map[string]int{}
	}
	m.released[how] += n
}

func holdGuard(t *testing.T, st store.Store, clk *fakeclock.Clock, limit int, m Metrics, jails ...Jail) *Guard {
	t.Helper()
	g, err := New(st, Config{
		Jails: jails, Prefixes: Prefixes{IPv4: 32, IPv6: 64}, Now: clk.Now, Metrics: m,
		Shared:           SharedRule{MinUsers: 5, Window: 24 * time.Hour},
		MaxBansPerMinute: limit,
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// attacker i of a burst: 10,000 distinct addresses of 198.18.0.0/15.
func attacker(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
}

// A burst of 10,000 distinct attackers, each failing maxretry times, from
// two nodes at once: exactly the limit is banned, every other ban is held
// (none lost, none applied), and all of them are applied when an
// administrator confirms.
func TestBlastRadiusBurst(t *testing.T) {
	for _, sk := range storeKinds {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			clk := fakeclock.New(time.Now().Truncate(time.Millisecond))
			node := sk.open(t, clk.Now)
			const limit, n, workers = 100, 10_000, 8
			m := &holdCounter{}
			nodes := []*Guard{holdGuard(t, node(0), clk, limit, m, authJail), holdGuard(t, node(1), clk, limit, m, authJail)}
			var wg sync.WaitGroup
			var mu sync.Mutex
			var made []store.Ban
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					g := nodes[w%2]
					for i := w; i < n; i += workers {
						for range authJail.MaxRetry {
							bans, err := g.Fail(ctx, attacker(i), "", "imap", "")
							if err != nil {
								t.Errorf("Fail(%v) = %v", attacker(i), err)
								return
							}
							mu.Lock()
							made = append(made, bans...)
							mu.Unlock()
						}
					}
				}()
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			st := nodes[0].st
			active, err := st.Bans(ctx)
			if err != nil {
				t.Fatal(err)
			}
			hs, err := nodes[1].Holding(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(made) != limit || len(active) != limit {
				t.Errorf("bans made %d, active %d; want the limit %d", len(made), len(active), limit)
			}
			if len(hs.Held) != n-limit || m.held != n-limit {
				t.Errorf("held %d (metric %d), want %d", len(hs.Held), m.held, n-limit)
			}
			seen := map[string]bool{}
			for _, b := range active {
				seen[b.Subject] = true
			}
			for _, h := range hs.Held {
				if seen[h.Subject] {
					t.Errorf("%s both banned and held", h.Subject)
				}
				seen[h.Subject] = true
			}
			if len(seen) != n {
				t.Errorf("banned or held: %d distinct attackers, want %d (none lost)", len(seen), n)
			}
			if hs.Rate != limit+1 || hs.Limit != limit {
				t.Errorf("Holding rate %d limit %d, want %d (saturated), %d", hs.Rate, hs.Limit, limit+1, limit)
			}
			// A held attacker is not refused: its ban is not applied.
			held := netip.MustParseAddr(hs.Held[0].Subject[len("net:") : len(hs.Held[0].Subject)-len("/32")])
			if banned, _, err := nodes[0].Check(ctx, held, ""); err != nil || banned != "" {
				t.Errorf("Check(held %v) = %q, %v; want not refused", held, banned, err)
			}
			sp, err := nodes[0].Spared(ctx, held.String())
			if err != nil || len(sp) != 1 || sp[0].Rule != RuleBlastRadius || sp[0].Jail != authJail.Name {
				t.Errorf("Spared(%v) = %+v, %v; want held by %s", held, sp, err, RuleBlastRadius)
			}
			// More failures of a held attacker: still held once, not counted again.
			for range 3 {
				if bans, err := nodes[1].Fail(ctx, held, "", "imap", ""); err != nil || len(bans) != 0 {
					t.Fatalf("Fail(held) = %v, %v", bans, err)
				}
			}
			r, err := nodes[1].Confirm(ctx, "")
			if err != nil || len(r.Bans) != n-limit || r.Expired != 0 {
				t.Fatalf("Confirm = %d bans, %d expired, %v; want %d, 0", len(r.Bans), r.Expired, err, n-limit)
			}
			if m.released["confirmed"] != n-limit {
				t.Errorf("released metric %v, want confirmed %d", m.released, n-limit)
			}
			// (Bans lists 10,000 in one reply, over Redis' read timeout
			// under -race: count them, and look at every 50th attacker.)
			if stats, err := st.Stats(ctx, []string{authJail.Name}); err != nil || stats[authJail.Name].TotalBanned != n {
				t.Errorf("after Confirm: %d bans made, %v; want %d", stats[authJail.Name].TotalBanned, err, n)
			}
			for i := 0; i < n; i += 50 {
				if banned, _, err := nodes[i%2].Check(ctx, attacker(i), ""); err != nil || banned == "" {
					t.Errorf("after Confirm: Check(%v) = %q, %v; want refused", attacker(i), banned, err)
				}
			}
			if banned, _, err := nodes[1].Check(ctx, held, ""); err != nil || banned == "" {
				t.Errorf("after Confirm: Check(%v) = %q, %v; want refused", held, banned, err)
			}
			if hs, _ := nodes[0].Holding(ctx); len(hs.Held) != 0 {
				t.Errorf("after Confirm: %d held, want none", len(hs.Held))
			}
		})
	}
}

// Once the rate drops back, held bans are released oldest first, at most
// the limit a minute, each ending when it would have ended had it been
// applied when held; one whose bantime ran out is dropped.
func TestBlastRadiusDrain(t *testing.T) {
	for _, sk := range storeKinds {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			clk := fakeclock.New(time.Now().Truncate(time.Millisecond))
			st := sk.open(t, clk.Now)(0)
			m := &holdCounter{}
			short := authJail
			short.Name, short.Key, short.BanTime = "short", KeyIP, 2*time.Minute
			g := holdGuard(t, st, clk, 2, m, authJail, short)
			failN := func(a netip.Addr, n int) {
				t.Helper()
				for range n {
					if _, err := g.Fail(ctx, a, "", "imap", ""); err != nil {
						t.Fatal(err)
					}
				}
			}
			// Two addresses: their prefix (authJail) and ip (short) bans are
			// four bans; the limit is two: two are held.
			failN(attacker(1), 5)
			clk.Add(time.Second)
			failN(attacker(2), 5)
			heldAt := clk.Now()
			hs, _ := g.Holding(ctx)
			if len(hs.Held) != 2 {
				t.Fatalf("held %d, want 2", len(hs.Held))
			}
			if r, err := g.Drain(ctx); err != nil || len(r.Bans) != 0 {
				t.Errorf("Drain within the minute = %v, %v; want nothing", r.Bans, err)
			}
			clk.Add(HoldSpan)
			r, err := g.Drain(ctx)
			if err != nil || len(r.Bans) != 2 || r.Expired != 0 {
				t.Fatalf("Drain a minute later = %d bans, %d expired, %v; want 2, 0", len(r.Bans), r.Expired, err)
			}
			for _, b := range r.Bans {
				want := heldAt.Add(authJail.BanTime)
				if b.Jail == short.Name {
					want = heldAt.Add(short.BanTime)
				}
				if !b.Expires.Equal(want) || b.Subject != netSubject(hostPrefix(attacker(2))) {
					t.Errorf("released %s %s until %v, want until %v (held at %v)", b.Jail, b.Subject, b.Expires, want, heldAt)
				}
			}
			if banned, _, _ := g.Check(ctx, attacker(2), ""); banned == "" {
				t.Errorf("released attacker not refused")
			}
			// The released bans count: a third attacker is held, and short's
			// ban runs out before the rate drops back.
			failN(attacker(3), 5)
			if hs, _ := g.Holding(ctx); len(hs.Held) != 2 {
				t.Fatalf("held %d, want 2", len(hs.Held))
			}
			clk.Add(short.BanTime)
			r, err = g.Drain(ctx)
			if err != nil || len(r.Bans) != 1 || r.Bans[0].Jail != authJail.Name || r.Expired != 1 {
				t.Fatalf("Drain after short's bantime = %v, %d expired, %v; want the dovecot ban, 1 expired", r.Bans, r.Expired, err)
			}
			if m.released["drained"] != 3 || m.released["expired"] != 1 {
				t.Errorf("released metric %v, want drained 3, expired 1", m.released)
			}
		})
	}
}

// A webmail host (many users log in from it, a few fail) is never banned,
// with both safety rules on; Spared names the rule.
func TestBlastRadiusWebmail(t *testing.T) {
	for _, sk := range storeKinds {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			clk := fakeclock.New(time.Now().Truncate(time.Millisecond))
			st := sk.open(t, clk.Now)(0)
			g := holdGuard(t, st, clk, 3, nil, authJail, userJail)
			web := netip.MustParseAddr("2001:db8:80::25")
			for i := range 200 {
				u := fmt.Sprintf("user%d@example.org", i)
				if err := g.Succeed(ctx, web, u); err != nil {
					t.Fatal(err)
				}
				if i%10 == 0 { // a few mistype their password, twice
					for k := range 2 {
						bans, err := g.Fail(ctx, web, u, "imap", fmt.Sprintf("pw%d", k))
						if err != nil || len(bans) != 0 {
							t.Fatalf("Fail(webmail, %s) = %v, %v; want no ban", u, bans, err)
						}
					}
				}
				clk.Add(time.Second)
			}
			if banned, _, err := g.Check(ctx, web, "user7@example.org"); err != nil || banned != "" {
				t.Errorf("Check(webmail) = %q, %v; want not refused", banned, err)
			}
			hs, err := g.Holding(ctx)
			if err != nil || len(hs.Held) != 0 || hs.Rate != 0 {
				t.Errorf("Holding = %+v, %v; want nothing held, rate 0", hs, err)
			}
			sp, err := g.Spared(ctx, web.String())
			if err != nil || len(sp) != 1 || sp[0].Rule != RuleSharedAddress || sp[0].Users != 5 {
				t.Errorf("Spared(webmail) = %+v, %v; want %s with 5 users", sp, err, RuleSharedAddress)
			}
			if sp, err := g.Spared(ctx, "198.51.100.1"); err != nil || len(sp) != 0 {
				t.Errorf("Spared(unknown) = %+v, %v; want none", sp, err)
			}
		})
	}
}

// With the guard on, a jail counting distinct passwords still bans at its
// maxretry-th distinct password (the ban's Hit must not be taken for the
// same password again).
func TestBlastRadiusDistinctPasswords(t *testing.T) {
	clk := fakeclock.New(time.Now().Truncate(time.Millisecond))
	st := storeKinds[0].open(t, clk.Now)(0)
	g := holdGuard(t, st, clk, 10, nil, userJail)
	var bans []store.Ban
	for i := range userJail.MaxRetry {
		b, err := g.Fail(context.Background(), attacker(i), "alice@example.org", "imap", fmt.Sprintf("pw%d", i))
		if err != nil {
			t.Fatal(err)
		}
		bans = append(bans, b...)
	}
	if len(bans) != 1 || bans[0].Subject != "user:alice@example.org" {
		t.Errorf("bans %v, want alice's", bans)
	}
}

// A ban through the blast-radius guard, admitted at once or held and then
// confirmed, counts each failure once (Stats' TotalFailed is the failures
// reported, TotalBanned the bans made) and escalates as any ban: a
// subject's second ban within the recidive window, held then confirmed,
// lasts bantime × factor, and its third, admitted, bantime × factor².
func TestBlastRadiusCountsOnce(t *testing.T) {
	for _, sk := range storeKinds {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			clk := fakeclock.New(time.Now().Truncate(time.Millisecond))
			st := sk.open(t, clk.Now)(0)
			g, err := New(st, Config{
				Jails: []Jail{authJail}, Prefixes: Prefixes{IPv4: 32, IPv6: 64}, Now: clk.Now,
				Recidive:         store.Recidive{Window: 24 * time.Hour, Factor: 2},
				MaxBansPerMinute: 1,
			})
			if err != nil {
				t.Fatal(err)
			}
			failed := 0
			// fail reports maxretry failures of a and returns the bans made.
			fail := func(a netip.Addr) []store.Ban {
				t.Helper()
				var bans []store.Ban
				for range authJail.MaxRetry {
					b, err := g.Fail(ctx, a, "", "imap", "")
					if err != nil {
						t.Fatalf("Fail(%v) = %v", a, err)
					}
					failed++
					bans = append(bans, b...)
				}
				return bans
			}
			wantTotals := func(when string, banned int64) {
				t.Helper()
				s, err := st.Stats(ctx, []string{authJail.Name})
				if err != nil {
					t.Fatal(err)
				}
				if js := s[authJail.Name]; js.TotalFailed != int64(failed) || js.TotalBanned != banned {
					t.Errorf("%s: total failed %d, banned %d; want the %d failures reported, %d bans",
						when, js.TotalFailed, js.TotalBanned, failed, banned)
				}
			}
			wantBan := func(what string, bans []store.Ban, a netip.Addr, nth int, lasts time.Duration) {
				t.Helper()
				if len(bans) != 1 {
					t.Fatalf("%s: bans %v, want one of %v", what, bans, a)
				}
				b := bans[0]
				if b.Subject != netSubject(hostPrefix(a)) || b.Nth != nth || b.Expires.Sub(b.Created) != lasts || !b.Created.Equal(clk.Now()) {
					t.Errorf("%s: ban %s #%d for %v from %v; want %s #%d for %v from now", what,
						b.Subject, b.Nth, b.Expires.Sub(b.Created), b.Created, netSubject(hostPrefix(a)), nth, lasts)
				}
			}
			a, b, c := attacker(1), attacker(2), attacker(3)
			wantBan("a, admitted", fail(a), a, 1, authJail.BanTime)
			wantTotals("a admitted", 1)
			// The minute's one ban is made: b's is held, then confirmed.
			if bans := fail(b); len(bans) != 0 {
				t.Fatalf("b over the limit: bans %v, want held", bans)
			}
			wantTotals("b held", 1)
			r, err := g.Confirm(ctx, b.String())
			if err != nil {
				t.Fatal(err)
			}
			wantBan("b, confirmed", r.Bans, b, 1, authJail.BanTime)
			wantTotals("b confirmed", 2)
			// a's ban has run out; within the recidive window, its second
			// ban is held (c's took the minute's), then confirmed.
			clk.Add(2 * time.Hour)
			wantBan("c, admitted", fail(c), c, 1, authJail.BanTime)
			if bans := fail(a); len(bans) != 0 {
				t.Fatalf("a over the limit: bans %v, want held", bans)
			}
			r, err = g.Confirm(ctx, a.String())
			if err != nil {
				t.Fatal(err)
			}
			wantBan("a's second, confirmed", r.Bans, a, 2, 2*authJail.BanTime)
			wantTotals("a's second confirmed", 4)
			// The confirmed ban counts towards recidive: a's third is the third.
			clk.Add(3 * time.Hour)
			wantBan("a's third, admitted", fail(a), a, 3, 4*authJail.BanTime)
			wantTotals("a's third admitted", 5)
		})
	}
}
