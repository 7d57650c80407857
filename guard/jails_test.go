package guard

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store/memstore"
)

// A known device protects its user from user bans for known_device_ttl and
// no longer: past it, the user ban refuses the old device too.
func TestKnownDeviceTTLExpires(t *testing.T) {
	const ttl = 24 * time.Hour
	clk := fakeclock.New(time.Now())
	st, err := memstore.Open(memstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	g, err := New(st, Config{Jails: []Jail{userJail}, KnownDeviceTTL: ttl, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const home, user = "198.51.100.50", "alice@example.org"
	if err := g.Succeed(ctx, netip.MustParseAddr(home), user); err != nil {
		t.Fatal(err)
	}
	clk.Add(ttl - time.Hour)
	if _, err := g.Ban(ctx, user, "dovecot-user", 3*time.Hour); err != nil {
		t.Fatal(err)
	}
	mustRefused(t, g, "203.0.113.9", user, true)
	mustRefused(t, g, home, user, false) // the known device
	clk.Add(time.Hour - time.Second)
	mustRefused(t, g, home, user, false) // a second before the device expires
	clk.Add(time.Second)
	mustRefused(t, g, home, user, true) // known_device_ttl has passed; the ban has 2h left
	mustRefused(t, g, home, "", false)  // the ban is on the user, not the address

	// A new success makes it a known device again.
	if err := g.Succeed(ctx, netip.MustParseAddr(home), user); err != nil {
		t.Fatal(err)
	}
	mustRefused(t, g, home, user, false)
}

// Jail protocols restrict what a jail counts; keys ip and user+prefix count
// and ban what they say.
func TestJailProtocolsAndKeys(t *testing.T) {
	type step struct {
		addr, user, protocol string
		bans                 int // bans made by this failure
	}
	type check struct {
		addr, user string
		refused    bool
	}
	for _, tc := range []struct {
		name   string
		jail   Jail
		steps  []step
		checks []check
	}{{
		name: "protocols imap and pop3 only",
		jail: Jail{Name: "j", Events: []string{EventAuthFailure}, Protocols: []string{"imap", "pop3"}, Key: KeyPrefix,
			MaxRetry: 2, FindTime: time.Hour, BanTime: time.Hour, Action: ActionRefuse},
		steps: []step{
			{"198.51.100.1", "u", "smtp", 0},
			{"198.51.100.1", "u", "submission", 0},
			{"198.51.100.1", "u", "smtp", 0}, // smtp never counts
			{"198.51.100.1", "u", "IMAP", 0}, // case-insensitive
			{"198.51.100.1", "u", "pop3", 1},
		},
		checks: []check{{"198.51.100.1", "", true}},
	}, {
		name: "protocols without smtp: no recipient counted either",
		jail: Jail{Name: "j", Events: []string{EventAuthFailure}, Protocols: []string{"sieve"}, Key: KeyPrefix,
			MaxRetry: 1, FindTime: time.Hour, BanTime: time.Hour, Action: ActionRefuse},
		steps:  []step{{"198.51.100.1", "u", "imap", 0}, {"198.51.100.1", "u", "Sieve", 1}},
		checks: []check{{"198.51.100.1", "", true}, {"198.51.100.2", "", false}},
	}, {
		name: "key ip: each IPv6 address of a /64 on its own",
		jail: Jail{Name: "j", Events: []string{EventAuthFailure}, Key: KeyIP,
			MaxRetry: 2, FindTime: time.Hour, BanTime: time.Hour, Action: ActionFirewall, Ports: []uint16{993}},
		steps: []step{
			{"2001:db8:1:2::1", "u", "imap", 0},
			{"2001:db8:1:2::2", "u", "imap", 0},
			{"2001:db8:1:2::3", "u", "imap", 0},
			{"2001:db8:1:2::1", "u", "imap", 1},
		},
		checks: []check{
			{"2001:db8:1:2::1", "", true},
			{"2001:db8:1:2::2", "", false},
			{"2001:db8:1:2::4", "", false},
		},
	}, {
		name: "key user+prefix: the user from that prefix only",
		jail: Jail{Name: "j", Events: []string{EventAuthFailure}, Key: KeyUserPrefix,
			MaxRetry: 3, FindTime: time.Hour, BanTime: time.Hour, Action: ActionRefuse},
		steps: []step{
			{"2001:db8:1:2::1", "alice@example.org", "imap", 0},
			{"2001:db8:1:2::2", "Alice@Example.org", "pop3", 0},
			{"2001:db8:1:3::1", "alice@example.org", "imap", 0}, // another /64
			{"2001:db8:1:2::3", "bob@example.org", "imap", 0},   // another user
			{"2001:db8:1:2::4", "", "imap", 0},                  // no user: no subject
			{"2001:db8:1:2:ffff::9", "alice@example.org", "imap", 1},
		},
		checks: []check{
			{"2001:db8:1:2::77", "alice@example.org", true},
			{"2001:db8:1:2::77", "ALICE@example.org", true},
			{"2001:db8:1:2::77", "bob@example.org", false},
			{"2001:db8:1:2::77", "", false},
			{"2001:db8:1:3::1", "alice@example.org", false},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newGuard(t, tc.jail)
			for i, s := range tc.steps {
				bans, err := g.Fail(context.Background(), netip.MustParseAddr(s.addr), s.user, s.protocol, "")
				if err != nil {
					t.Fatalf("step %d: Fail(%s, %q, %s) = %v", i+1, s.addr, s.user, s.protocol, err)
				}
				if len(bans) != s.bans {
					t.Fatalf("step %d: Fail(%s, %q, %s) made bans %v, want %d", i+1, s.addr, s.user, s.protocol, bans, s.bans)
				}
			}
			for _, c := range tc.checks {
				mustRefused(t, g, c.addr, c.user, c.refused)
			}
		})
	}
}

// A rate-limit jail restricted to protocols without smtp counts no
// recipients; Recipient never says over.
func TestRateJailProtocols(t *testing.T) {
	j := rateJail
	j.MaxRetry = 1
	j.Protocols = []string{"imap"}
	g, _ := newGuard(t, j)
	for i := range 3 {
		over, err := g.Recipient(context.Background(), netip.MustParseAddr("198.51.100.7"), "carol@example.org")
		if err != nil || over {
			t.Fatalf("recipient %d: over = %v, %v; want false (the jail counts imap only)", i+1, over, err)
		}
	}
}
