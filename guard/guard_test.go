package guard

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
)

var (
	authJail = Jail{Name: "dovecot", Events: []string{EventAuthFailure}, Key: KeyPrefix, MaxRetry: 5,
		FindTime: 10 * time.Minute, BanTime: time.Hour, Action: ActionFirewall, Ports: []uint16{993}}
	userJail = Jail{Name: "dovecot-user", Events: []string{EventAuthFailure}, Key: KeyUser, MaxRetry: 3,
		FindTime: time.Hour, BanTime: time.Hour, Action: ActionRefuse, DistinctPasswords: true}
	rateJail = Jail{Name: "postfix-rate", Events: []string{EventRecipient}, Key: KeyUser, MaxRetry: 3,
		FindTime: time.Hour, Action: ActionRefuse}
)

func newGuard(t testing.TB, jails ...Jail) (*Guard, *fakeclock.Clock) {
	t.Helper()
	clk := fakeclock.New(time.Now())
	st, err := memstore.Open(memstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	g, err := New(st, Config{
		Jails:    jails,
		Ignore:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("192.0.2.128/25")},
		Prefixes: Prefixes{IPv4: 32, IPv6: 64},
		Recidive: store.Recidive{Window: 24 * time.Hour, Factor: 2, MaxTime: 3 * time.Hour},
		Now:      clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return g, clk
}

func mustRefused(t *testing.T, g *Guard, a, user string, want bool) {
	t.Helper()
	banned, _, err := g.Check(context.Background(), netip.MustParseAddr(a), user)
	if err != nil {
		t.Fatalf("Check(%s, %q): %v", a, user, err)
	}
	if got := banned != ""; got != want {
		t.Fatalf("Check(%s, %q) refused = %v (%q), want %v", a, user, banned != "", banned, want)
	}
}

func fail(t *testing.T, g *Guard, a, user, pw string, n int) (bans []store.Ban) {
	t.Helper()
	for range n {
		b, err := g.Fail(context.Background(), netip.MustParseAddr(a), user, "imap", pw)
		if err != nil {
			t.Fatalf("Fail(%s): %v", a, err)
		}
		bans = append(bans, b...)
	}
	return bans
}

func TestWindowEdges(t *testing.T) {
	t.Run("N-1 does not ban, N bans", func(t *testing.T) {
		g, _ := newGuard(t, authJail)
		if bans := fail(t, g, "198.51.100.7", "", "", 4); len(bans) != 0 {
			t.Fatalf("4 failures made bans %v, want none", bans)
		}
		mustRefused(t, g, "198.51.100.7", "", false)
		if bans := fail(t, g, "198.51.100.7", "", "", 1); len(bans) != 1 {
			t.Fatalf("5th failure made %d bans, want 1", len(bans))
		}
		mustRefused(t, g, "198.51.100.7", "", true)
		mustRefused(t, g, "198.51.100.8", "", false)
	})
	t.Run("failures age out of the sliding window", func(t *testing.T) {
		g, clk := newGuard(t, authJail)
		fail(t, g, "198.51.100.7", "", "", 2)
		clk.Add(6 * time.Minute)
		fail(t, g, "198.51.100.7", "", "", 2)
		clk.Add(5 * time.Minute) // the first two are now 11m old
		if bans := fail(t, g, "198.51.100.7", "", "", 1); len(bans) != 0 {
			t.Fatalf("3 failures inside findtime banned: %v", bans)
		}
		mustRefused(t, g, "198.51.100.7", "", false)
		if bans := fail(t, g, "198.51.100.7", "", "", 2); len(bans) != 1 {
			t.Fatalf("5 failures inside a sliding findtime made %d bans, want 1", len(bans))
		}
	})
	t.Run("ban expires after bantime", func(t *testing.T) {
		g, clk := newGuard(t, authJail)
		fail(t, g, "198.51.100.7", "", "", 5)
		clk.Add(59 * time.Minute)
		mustRefused(t, g, "198.51.100.7", "", true)
		clk.Add(2 * time.Minute)
		mustRefused(t, g, "198.51.100.7", "", false)
	})
}

func TestEscalation(t *testing.T) {
	g, clk := newGuard(t, authJail)
	want := []time.Duration{time.Hour, 2 * time.Hour, 3 * time.Hour, 3 * time.Hour} // ×2, capped at 3h
	for i, w := range want {
		bans := fail(t, g, "198.51.100.7", "", "", 5)
		if len(bans) != 1 {
			t.Fatalf("round %d: %d bans, want 1", i+1, len(bans))
		}
		if got := bans[0].Expires.Sub(bans[0].Created); got != w || bans[0].Nth != i+1 {
			t.Errorf("ban %d lasts %v (nth %d), want %v (nth %d)", i+1, got, bans[0].Nth, w, i+1)
		}
		clk.Add(w + time.Minute)
	}
	clk.Add(25 * time.Hour) // outside recidive.window: back to bantime
	bans := fail(t, g, "198.51.100.7", "", "", 5)
	if len(bans) != 1 || bans[0].Expires.Sub(bans[0].Created) != time.Hour {
		t.Errorf("after the recidive window: %v, want one 1h ban", bans)
	}
}

func TestIPv6PrefixAndMapped(t *testing.T) {
	g, _ := newGuard(t, authJail)
	// Rotating through one /64 is one subject.
	for i, a := range []string{"2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:aaaa::3", "2001:db8:1:2::4", "2001:db8:1:2:ffff::5"} {
		bans := fail(t, g, a, "", "", 1)
		if i < 4 && len(bans) != 0 {
			t.Fatalf("failure %d banned early", i+1)
		}
		if i == 4 && (len(bans) != 1 || bans[0].Subject != "net:2001:db8:1:2::/64") {
			t.Fatalf("5th failure in the /64: bans %v, want net:2001:db8:1:2::/64", bans)
		}
	}
	mustRefused(t, g, "2001:db8:1:2::99", "", true)
	mustRefused(t, g, "2001:db8:1:3::1", "", false)

	// ::ffff:198.51.100.9 is the IPv4 address.
	fail(t, g, "::ffff:198.51.100.9", "", "", 3)
	bans := fail(t, g, "198.51.100.9", "", "", 2)
	if len(bans) != 1 || bans[0].Subject != "net:198.51.100.9/32" {
		t.Fatalf("mapped+plain failures: bans %v, want net:198.51.100.9/32", bans)
	}
	mustRefused(t, g, "::ffff:198.51.100.9", "", true)
}

func TestIgnoreIP(t *testing.T) {
	g, _ := newGuard(t, authJail, userJail)
	for _, a := range []string{"127.0.0.1", "::1", "192.0.2.200", "::ffff:127.0.0.2"} {
		if bans := fail(t, g, a, "bob", "x", 50); len(bans) != 0 {
			t.Errorf("failures from ignored %s made bans %v", a, bans)
		}
		mustRefused(t, g, a, "bob", false)
		if _, err := g.Ban(context.Background(), a, "", 0); !errors.Is(err, ErrIgnored) {
			t.Errorf("Ban(%s) = %v, want ErrIgnored", a, err)
		}
	}
	if _, err := g.Ban(context.Background(), "192.0.2.0/24", "", 0); err == nil {
		t.Errorf("Ban of a /24 overlapping ignoreip: no error")
	}
	st, err := g.Status(context.Background(), "")
	if err != nil || len(st) != 2 {
		t.Fatalf("Status = %d jails, %v; want 2", len(st), err)
	}
	for _, j := range st {
		if j.TotalFailed != 0 || len(j.Banned) != 0 {
			t.Errorf("jail %s counted ignored clients: %+v", j.Name, j.JailStats)
		}
	}
}

func TestDistinctPasswordsAndKnownDevice(t *testing.T) {
	g, _ := newGuard(t, userJail)
	ctx := context.Background()
	home := netip.MustParseAddr("198.51.100.50")
	if err := g.Succeed(ctx, home, "Alice@Example.org"); err != nil {
		t.Fatal(err)
	}
	// The same wrong password again and again is one failure.
	if bans := fail(t, g, "203.0.113.5", "alice@example.org", "03a1", 10); len(bans) != 0 {
		t.Fatalf("one distinct password banned the user: %v", bans)
	}
	fail(t, g, "203.0.113.5", "alice@example.org", "0111", 1)
	if bans := fail(t, g, "203.0.113.6", "ALICE@example.org", "0222", 1); len(bans) != 1 || bans[0].Subject != "user:alice@example.org" {
		t.Fatalf("3rd distinct password: bans %v, want user:alice@example.org", bans)
	}
	// The attacker's prefix is refused for alice, her own device is not.
	mustRefused(t, g, "203.0.113.5", "alice@example.org", true)
	mustRefused(t, g, "203.0.113.5", "", false)
	mustRefused(t, g, "198.51.100.50", "alice@example.org", false)
	if _, err := g.Unban(ctx, "alice@example.org"); err != nil {
		t.Fatal(err)
	}
	mustRefused(t, g, "203.0.113.5", "alice@example.org", false)
}

// Logins longer than maxLoginLen are kept as a fixed-size digest: they still
// count and ban (case-insensitively, as every login), but cost the store no
// more than a short one.
func TestLongLoginDigest(t *testing.T) {
	g, _ := newGuard(t, userJail)
	long := "a" + strings.Repeat("x", 8000) + "@example.org"
	fail(t, g, "203.0.113.5", long, "0111", 1)
	fail(t, g, "203.0.113.6", strings.ToUpper(long), "0222", 1)
	bans := fail(t, g, "203.0.113.7", "  "+long, "0333", 1)
	if len(bans) != 1 {
		t.Fatalf("3 distinct passwords for a long login: bans %v, want one", bans)
	}
	if n := len(bans[0].Subject); n > len("user:")+maxLoginLen {
		t.Errorf("ban subject is %d bytes, want at most %d", n, len("user:")+maxLoginLen)
	}
	mustRefused(t, g, "203.0.113.9", strings.ToUpper(long), true)
	mustRefused(t, g, "203.0.113.9", long[:maxLoginLen], false)
	// A login at the bound is kept as it is.
	edge := strings.Repeat("b", maxLoginLen)
	if got := normUser(edge); got != edge {
		t.Errorf("normUser(%d bytes) = %q, want it unchanged", len(edge), got)
	}
	for _, u := range []string{long, edge, "Alice"} {
		if once := normUser(u); normUser(once) != once {
			t.Errorf("normUser is not idempotent on %.20q...", u)
		}
	}
}

func TestRecipientRate(t *testing.T) {
	g, clk := newGuard(t, rateJail)
	ctx := context.Background()
	a := netip.MustParseAddr("198.51.100.7")
	for i := 1; i <= 5; i++ {
		over, err := g.Recipient(ctx, a, "carol@example.org")
		if err != nil {
			t.Fatal(err)
		}
		if want := i > 3; over != want {
			t.Fatalf("recipient %d: over = %v, want %v", i, over, want)
		}
	}
	if over, err := g.Recipient(ctx, a, "dave@example.org"); err != nil || over {
		t.Fatalf("another user: over = %v, %v; want false", over, err)
	}
	mustRefused(t, g, "198.51.100.7", "carol@example.org", false) // a rate limit never bans
	clk.Add(61 * time.Minute)
	if over, err := g.Recipient(ctx, a, "carol@example.org"); err != nil || over {
		t.Fatalf("after findtime: over = %v, %v; want false", over, err)
	}
	st, err := g.Status(ctx, "postfix-rate")
	if err != nil || len(st) != 1 {
		t.Fatalf("Status(postfix-rate) = %d jails, %v; want 1", len(st), err)
	}
	if got := st[0].ByProtocol["smtp"]; got != 7 {
		t.Errorf("postfix-rate counted %d smtp recipients, want 7", got)
	}
}

func TestManualBanTargets(t *testing.T) {
	g, _ := newGuard(t, authJail)
	ctx := context.Background()
	for _, tc := range []struct {
		target, subject string
		ok              bool
	}{
		{"198.51.100.7", "net:198.51.100.7/32", true},
		{"2001:db8::1", "net:2001:db8::1/128", true},
		{"2001:db8:5::/64", "net:2001:db8:5::/64", true},
		{"2001:db8:5::/56", "", false},
		{"bob@example.org", "user:bob@example.org", true},
		{"", "", false},
		{"bad host", "", false},
	} {
		b, err := g.Ban(ctx, tc.target, "", time.Minute)
		if (err == nil) != tc.ok || b.Subject != tc.subject {
			t.Errorf("Ban(%q) = %q, %v; want %q ok=%v", tc.target, b.Subject, err, tc.subject, tc.ok)
		}
	}
	mustRefused(t, g, "2001:db8:5::77", "", true)
	if _, err := g.Ban(ctx, "198.51.100.9", "nope", 0); err == nil {
		t.Errorf("Ban in unknown jail: no error")
	}
}

func TestStatusByProtocol(t *testing.T) {
	g, _ := newGuard(t, authJail)
	ctx := context.Background()
	a := netip.MustParseAddr("198.51.100.7")
	for _, p := range []string{"imap", "IMAP", "smtp"} {
		if _, err := g.Fail(ctx, a, "u", p, ""); err != nil {
			t.Fatal(err)
		}
	}
	st, err := g.Status(ctx, "dovecot")
	if err != nil {
		t.Fatal(err)
	}
	if got := st[0].ByProtocol; got["imap"] != 2 || got["smtp"] != 1 || len(got) != 2 {
		t.Errorf("ByProtocol = %v, want imap 2, smtp 1", got)
	}
}

// CheckLogin tells user bans from address bans, and the failures counted
// against the client from those counted against its user elsewhere.
func TestCheckLoginVerdict(t *testing.T) {
	g, _ := newGuard(t, authJail, userJail)
	ctx := context.Background()
	check := func(a, user string) Verdict {
		t.Helper()
		v, err := g.CheckLogin(ctx, netip.MustParseAddr(a), user)
		if err != nil {
			t.Fatalf("CheckLogin(%s, %q): %v", a, user, err)
		}
		return v
	}
	home := netip.MustParseAddr("198.51.100.50")
	if err := g.Succeed(ctx, home, "alice@example.org"); err != nil {
		t.Fatal(err)
	}
	fail(t, g, "203.0.113.5", "alice@example.org", "0111", 1)
	fail(t, g, "203.0.113.6", "alice@example.org", "0222", 1)
	tests := []struct {
		name, addr, user string
		want             Verdict
	}{
		{"attacker, own failures and the user's", "203.0.113.5", "alice@example.org", Verdict{Failures: 1, UserFailures: 2}},
		{"new network, the user's failures only", "192.0.2.9", "alice@example.org", Verdict{UserFailures: 2}},
		{"known device", "198.51.100.50", "alice@example.org", Verdict{}},
		{"attacker, another user", "203.0.113.5", "bob@example.org", Verdict{Failures: 1}},
	}
	for _, tt := range tests {
		if got := check(tt.addr, tt.user); got != tt.want {
			t.Errorf("%s: CheckLogin(%s, %s) = %+v, want %+v", tt.name, tt.addr, tt.user, got, tt.want)
		}
	}
	// The third distinct password bans the user: a user-keyed refusal.
	fail(t, g, "203.0.113.6", "alice@example.org", "0333", 1)
	if got, want := check("192.0.2.9", "alice@example.org"), (Verdict{Refused: true, Banned: "user:alice@example.org", ByUser: true}); got != want {
		t.Errorf("user banned: CheckLogin = %+v, want %+v", got, want)
	}
	// An address ban as well: the refusal is about the network.
	fail(t, g, "203.0.113.6", "bob@example.org", "0444", 5)
	if got, want := check("203.0.113.6", "alice@example.org"), (Verdict{Refused: true, Banned: "net:203.0.113.6/32"}); got != want {
		t.Errorf("user and address banned: CheckLogin = %+v, want %+v", got, want)
	}
	if got, want := check("203.0.113.6", ""), (Verdict{Refused: true, Banned: "net:203.0.113.6/32"}); got != want {
		t.Errorf("address banned: CheckLogin = %+v, want %+v", got, want)
	}
}
