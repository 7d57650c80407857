package guard

import (
	"net/netip"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
)

func newTOTPGuard(t *testing.T) (*Guard, *memstore.Store, *fakeclock.Clock) {
	t.Helper()
	clk := fakeclock.New(time.Now())
	st, err := memstore.Open(memstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	trust := func(a netip.Addr) netip.Prefix { p, _ := a.Prefix(24); return p }
	g, err := New(st, Config{Jails: []Jail{authJail}, Ignore: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Now: clk.Now, SecondFactor: SecondFactor{Prefix: trust}})
	if err != nil {
		t.Fatal(err)
	}
	return g, st, clk
}

// TestCheckAfterAuth: an enrolled user from an unapproved trust prefix is
// refused after auth (never before), the attempt becomes a pending login;
// an approved prefix, a user without TOTP and ignoreip are not refused.
func TestCheckAfterAuth(t *testing.T) {
	g, st, clk := newTOTPGuard(t)
	ctx := t.Context()
	a := netip.MustParseAddr("198.51.100.7")
	if err := st.Enrol(ctx, store.Enrolment{User: "alice@example.org", Secret: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	check := func(addr netip.Addr, user string) Verdict {
		t.Helper()
		v, err := g.CheckAfterAuth(ctx, addr, user, "IMAP")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := check(a, "Alice@Example.org"); !v.SecondFactor || v.Refused {
		t.Errorf("enrolled, unapproved: %+v, want SecondFactor", v)
	}
	if v, _ := g.CheckLogin(ctx, a, "alice@example.org"); v.SecondFactor {
		t.Errorf("before-auth check says SecondFactor: %+v", v)
	}
	ps, _ := st.Pending(ctx, "alice@example.org")
	if len(ps) != 1 || ps[0].Prefix != netip.MustParsePrefix("198.51.100.0/24") || ps[0].Addr != a || ps[0].Protocol != "imap" || !ps[0].At.Equal(clk.Now()) {
		t.Errorf("pending = %+v", ps)
	}
	if v := check(a, "bob@example.org"); v.SecondFactor {
		t.Errorf("user without TOTP: %+v", v)
	}
	if v := check(netip.MustParseAddr("127.0.0.5"), "alice@example.org"); v.SecondFactor {
		t.Errorf("ignoreip: %+v", v)
	}
	st.Approve(ctx, store.Approval{User: "alice@example.org", Prefix: netip.MustParsePrefix("198.51.100.0/24"), Expires: clk.Now().Add(time.Hour)})
	if v := check(netip.MustParseAddr("198.51.100.200"), "alice@example.org"); v.SecondFactor {
		t.Errorf("approved prefix: %+v", v)
	}
	if v := check(netip.MustParseAddr("198.51.101.7"), "alice@example.org"); !v.SecondFactor {
		t.Errorf("next /24: %+v, want SecondFactor", v)
	}
}

// TestTOTPJail: wrong codes ban per user and per prefix; the ban refuses
// further codes; the jail shows in Status; a configured jail cannot take
// its name.
func TestTOTPJail(t *testing.T) {
	g, _, _ := newTOTPGuard(t)
	ctx := t.Context()
	a := netip.MustParseAddr("198.51.100.7")
	for i := range DefaultTOTPJail.MaxRetry {
		if r, _ := g.CodeRefused(ctx, a, "alice@example.org"); r {
			t.Fatalf("refused after %d wrong codes", i)
		}
		if err := g.CodeFailed(ctx, a, "alice@example.org"); err != nil {
			t.Fatal(err)
		}
	}
	if r, _ := g.CodeRefused(ctx, netip.Addr{}, "alice@example.org"); !r {
		t.Error("user not refused after maxretry wrong codes")
	}
	if r, _ := g.CodeRefused(ctx, a, "bob@example.org"); !r {
		t.Error("client not refused after maxretry wrong codes")
	}
	if r, _ := g.CodeRefused(ctx, netip.MustParseAddr("203.0.113.1"), "bob@example.org"); r {
		t.Error("another user from another client refused")
	}
	st, err := g.Status(ctx, TOTPJail)
	if err != nil || len(st) != 1 || len(st[0].Banned) != 2 {
		t.Errorf("Status(totp) = %+v, %v; want 2 bans", st, err)
	}
	st2, _ := memstore.Open(memstore.Options{})
	defer st2.Close()
	if _, err := New(st2, Config{Jails: []Jail{{Name: TOTPJail, Events: []string{EventAuthFailure}, Key: KeyIP, MaxRetry: 1, FindTime: time.Minute, BanTime: time.Minute, Action: ActionRefuse}},
		SecondFactor: SecondFactor{Prefix: func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 24) }}}); err == nil {
		t.Error("a configured jail named totp was accepted with TOTP on")
	}
}

// BenchmarkAfterAuth measures the after-auth check of a user who has not
// enrolled, on the embedded store: TOTP off, on with nobody enrolled, and on
// with other users enrolled (the lookup then reads the TOTP state).
func BenchmarkAfterAuth(b *testing.B) {
	a := netip.MustParseAddr("198.51.100.7")
	for _, tc := range []struct {
		name   string
		totp   bool
		others bool
	}{{"off", false, false}, {"on-nobody-enrolled", true, false}, {"on-others-enrolled", true, true}} {
		b.Run(tc.name, func(b *testing.B) {
			st, err := memstore.Open(memstore.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			c := Config{Jails: []Jail{authJail, userJail}}
			if tc.totp {
				c.SecondFactor.Prefix = func(a netip.Addr) netip.Prefix { p, _ := a.Prefix(24); return p }
			}
			g, err := New(st, c)
			if err != nil {
				b.Fatal(err)
			}
			if tc.others {
				st.Enrol(b.Context(), store.Enrolment{User: "carol@example.org", Secret: []byte("x")})
			}
			ctx := b.Context()
			b.ReportAllocs()
			for b.Loop() {
				if v, err := g.CheckAfterAuth(ctx, a, "alice@example.org", "imap"); err != nil || v.Refused || v.SecondFactor {
					b.Fatalf("CheckAfterAuth = %+v, %v", v, err)
				}
			}
		})
	}
}
