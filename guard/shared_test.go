package guard

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// stores opens the store of a node n (0, 1, ...) of one site: with Redis,
// every node's store shares one server and prefix; the embedded store is
// one node's alone.
type storeKind struct {
	name string
	open func(t *testing.T, now func() time.Time) func(node int) store.Store
}

var storeKinds = []storeKind{
	{"memory", func(t *testing.T, now func() time.Time) func(int) store.Store {
		st, err := memstore.Open(memstore.Options{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return func(int) store.Store { return st }
	}},
	{"redis", func(t *testing.T, now func() time.Time) func(int) store.Store {
		addr := redistest.Start(t)
		return func(node int) store.Store {
			st, err := redisstore.Open(t.Context(), redisstore.Options{Addrs: []string{addr}, Prefix: "t:", Now: now, Node: string(rune('a' + node))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}
	}},
}

func sharedGuard(t *testing.T, st store.Store, clk *fakeclock.Clock, jails ...Jail) *Guard {
	t.Helper()
	g, err := New(st, Config{
		Jails: jails, Prefixes: Prefixes{IPv4: 32, IPv6: 64}, Now: clk.Now,
		Shared: SharedRule{MinUsers: 3, Window: 24 * time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// An address from which 3 distinct users logged in (a webmail) is never
// banned by address, whatever one user's failures; that user's own jail
// still bans that user; an address short of 3 users is banned as before;
// the rule holds on a second node sharing the Redis store, and ends when
// the window has passed.
func TestSharedAddress(t *testing.T) {
	for _, sk := range storeKinds {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			clk := fakeclock.New(time.Now().Truncate(time.Millisecond))
			node := sk.open(t, clk.Now)
			g := sharedGuard(t, node(0), clk, authJail, userJail)
			other := g
			if sk.name == "redis" {
				other = sharedGuard(t, node(1), clk, authJail, userJail)
			}
			web, home := netip.MustParseAddr("203.0.113.80"), netip.MustParseAddr("198.51.100.7")
			for _, u := range []string{"alice@example.org", "bob@example.org", "Carol@example.org"} {
				if err := g.Succeed(ctx, web, u); err != nil {
					t.Fatal(err)
				}
			}
			for _, u := range []string{"dave@example.org", "erin@example.org"} {
				if err := g.Succeed(ctx, home, u); err != nil {
					t.Fatal(err)
				}
			}
			// mallory guesses from the webmail, on the other node: 10 failures,
			// twice the dovecot jail's maxretry.
			pw := []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "a"}
			var bans []store.Ban
			for _, p := range pw {
				b, err := other.Fail(ctx, web, "mallory@example.org", "imap", p)
				if err != nil {
					t.Fatal(err)
				}
				bans = append(bans, b...)
			}
			if len(bans) == 0 || slices.ContainsFunc(bans, func(b store.Ban) bool { return b.Subject != "user:mallory@example.org" }) {
				t.Errorf("bans from the shared address = %v, want only user:mallory@example.org", bans)
			}
			mustRefused(t, other, "203.0.113.80", "alice@example.org", false)
			mustRefused(t, g, "203.0.113.80", "", false)
			mustRefused(t, g, "203.0.113.80", "mallory@example.org", true)
			if st, err := g.Status(ctx, "dovecot"); err != nil || st[0].Failing != 1 {
				t.Errorf("dovecot jail status: %+v, %v; want the shared address's failures counted (1 failing)", st, err)
			}

			// Two users are not enough: the home address is banned at 5.
			if b := fail(t, g, "198.51.100.7", "dave@example.org", "x", 5); len(b) != 1 || b[0].Subject != "net:198.51.100.7/32" {
				t.Errorf("bans from an address with 2 users = %v, want net:198.51.100.7/32", b)
			}

			got, rule, err := other.SharedAddresses(ctx)
			if err != nil || len(got) != 1 || got["net:203.0.113.80/32"] != 3 || rule.MinUsers != 3 {
				t.Errorf("SharedAddresses = %v, %+v, %v; want net:203.0.113.80/32: 3", got, rule, err)
			}

			// A day later nobody logged in from it: an address again.
			clk.Add(24 * time.Hour)
			if got, _, _ := g.SharedAddresses(ctx); len(got) != 0 {
				t.Errorf("SharedAddresses a day later = %v, want none", got)
			}
			if b := fail(t, g, "203.0.113.80", "", "", 5); len(b) != 1 || b[0].Subject != "net:203.0.113.80/32" {
				t.Errorf("bans a day later = %v, want net:203.0.113.80/32", b)
			}
		})
	}
}

// A manual ban still applies to a shared address: the rule is about jails.
func TestSharedAddressManualBan(t *testing.T) {
	clk := fakeclock.New(time.Now())
	st, err := memstore.Open(memstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	g := sharedGuard(t, st, clk, authJail)
	for _, u := range []string{"a", "b", "c"} {
		if err := g.Succeed(context.Background(), netip.MustParseAddr("203.0.113.80"), u); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := g.Ban(context.Background(), "203.0.113.80", "", 0); err != nil {
		t.Fatal(err)
	}
	mustRefused(t, g, "203.0.113.80", "a", true)
}

func TestSharedRuleNeedsSharing(t *testing.T) {
	if _, err := New(noSharing{}, Config{Shared: SharedRule{MinUsers: 2}}); err == nil {
		t.Errorf("New with the rule on a store without store.Sharing = nil error")
	}
	if _, err := New(noSharing{}, Config{}); err != nil {
		t.Errorf("New with the rule off = %v", err)
	}
}

type noSharing struct{ store.Store }

// Jails with apps count only reports of those apps; jails without apps
// count every source.
func TestJailApps(t *testing.T) {
	webJail := Jail{Name: "roundcube", Events: []string{EventAuthFailure}, Apps: []string{"roundcube"}, Key: KeyIP,
		MaxRetry: 3, FindTime: time.Hour, BanTime: time.Hour, Action: ActionRefuse}
	g, _ := newGuard(t, authJail, webJail)
	ctx := context.Background()
	a := netip.MustParseAddr("198.51.100.9")
	for _, tc := range []struct {
		r     Report
		jails []string
		err   error
	}{
		{Report{Kind: EventAuthFailure, Addr: a, User: "alice", App: "roundcube"}, []string{"dovecot", "roundcube"}, nil},
		{Report{Kind: EventAuthFailure, Addr: a, User: "alice", App: "postfixadmin"}, []string{"dovecot"}, nil},
		{Report{Kind: EventAuthFailure, Addr: a, User: "alice"}, []string{"dovecot"}, nil},
		{Report{Kind: EventAuthSuccess, Addr: a, User: "alice", App: "roundcube"}, []string{}, nil},
		{Report{Kind: "rcpt", Addr: a, App: "roundcube"}, nil, ErrReport},
		{Report{Kind: EventAuthFailure, Addr: a, App: "Round Cube"}, nil, ErrReport},
		{Report{Kind: EventAuthFailure, App: "roundcube"}, nil, ErrReport},
	} {
		got, err := g.Report(ctx, tc.r)
		if !errors.Is(err, tc.err) || !slices.Equal(got.Jails, tc.jails) {
			t.Errorf("Report(%+v) = %v, %v; want jails %v, error %v", tc.r, got.Jails, err, tc.jails, tc.err)
		}
	}
	// Dovecot's failures name no app: the roundcube jail does not count them.
	fail(t, g, "198.51.100.10", "bob", "", 3)
	mustRefused(t, g, "198.51.100.10", "", false)
	if r, err := g.Report(ctx, Report{Kind: EventAuthFailure, Addr: a, App: "roundcube"}); err != nil || len(r.Bans) != 0 {
		t.Errorf("second roundcube failure: %+v, %v; want no ban", r, err)
	}
	r, err := g.Report(ctx, Report{Kind: EventAuthFailure, Addr: a, App: "roundcube"})
	if err != nil || !slices.ContainsFunc(r.Bans, func(b store.Ban) bool { return b.Jail == "roundcube" }) {
		t.Errorf("third roundcube failure: %+v, %v; want a roundcube ban", r, err)
	}
	for _, n := range []string{"roundcube", "sogo", "my-app_2.0"} {
		if !ValidApp(n) {
			t.Errorf("ValidApp(%q) = false", n)
		}
	}
	for _, n := range []string{"", "Roundcube", "-x", "a b", string(make([]byte, 65))} {
		if ValidApp(n) {
			t.Errorf("ValidApp(%q) = true", n)
		}
	}
}
