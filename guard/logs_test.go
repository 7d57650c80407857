package guard

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store/memstore"
)

var postfixLogJail = Jail{Name: "postfix", Events: []string{EventAbuse}, Key: KeyPrefix, MaxRetry: 3,
	FindTime: 10 * time.Minute, BanTime: time.Hour, Action: ActionFirewall, Ports: []uint16{25},
	Logs: []string{"log:/var/log/mail.log:postfix"}}

func TestLogFailureCountsInItsJail(t *testing.T) {
	other := authJail // counts auth failures only: a log match of another jail is not its business
	g, _ := newGuard(t, postfixLogJail, other)
	ctx := context.Background()
	const src = "log:/var/log/mail.log:postfix"
	a := netip.MustParseAddr("198.51.100.7")
	for i := 1; i <= 3; i++ {
		bans, counted, err := g.LogFailure(ctx, "postfix", a, "", src)
		if err != nil || !counted {
			t.Fatalf("LogFailure #%d = %v, %v", i, counted, err)
		}
		if got, want := len(bans), map[bool]int{true: 1, false: 0}[i == 3]; got != want {
			t.Fatalf("LogFailure #%d made %d bans, want %d", i, got, want)
		}
		if i == 3 && (bans[0].Reason != src || bans[0].Jail != "postfix") {
			t.Errorf("ban = %+v, want jail postfix, reason %q", bans[0], src)
		}
	}
	st, err := g.Status(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, js := range st {
		switch js.Name {
		case "postfix":
			if js.ByProtocol[src] != 3 || js.TotalFailed != 3 {
				t.Errorf("postfix status: by protocol %v, total %d; want 3 from %s", js.ByProtocol, js.TotalFailed, src)
			}
		case "dovecot":
			if js.TotalFailed != 0 {
				t.Errorf("dovecot counted %d log matches of the postfix jail", js.TotalFailed)
			}
		}
	}

	for _, tc := range []struct {
		name, jail, addr, user string
		ok                     bool
	}{
		{"ignoreip", "postfix", "127.0.0.2", "", false},
		{"user key without a user", "dovecot-user", "198.51.100.8", "", false},
		{"user key with a user", "dovecot-user", "198.51.100.8", "alice", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uj := userJail
			uj.DistinctPasswords = false
			uj.Logs = []string{"log:/var/log/roundcube/userlogins.log:roundcube-auth"}
			g, _ := newGuard(t, postfixLogJail, uj)
			_, counted, err := g.LogFailure(ctx, tc.jail, netip.MustParseAddr(tc.addr), tc.user, src)
			if err != nil || counted != tc.ok {
				t.Errorf("LogFailure(%s, %s, %q) = %v, %v; want counted %v", tc.jail, tc.addr, tc.user, counted, err, tc.ok)
			}
		})
	}
	if _, _, err := g.LogFailure(ctx, "nope", a, "", src); err == nil {
		t.Errorf("LogFailure(no such jail) = nil error")
	}
}

// A jail fed by the Dovecot hook and by Dovecot's log counts a failed
// login once, whichever report comes first; a jail without logs counts
// every hook report.
func TestCountOnceHookAndLog(t *testing.T) {
	const src = "log:/var/log/mail.log:dovecot"
	both := authJail
	both.MaxRetry = 100
	both.Logs = []string{src}
	plain := authJail
	plain.Name, plain.MaxRetry = "plain", 100
	a := netip.MustParseAddr("198.51.100.9")
	ctx := context.Background()
	type step struct {
		hook bool
		wait time.Duration
	}
	H, L := step{hook: true}, step{}
	for _, tc := range []struct {
		name      string
		steps     []step
		both, all int // failures counted in the jail with logs, in the plain one
	}{
		{"hook then log", []step{H, L}, 1, 1},
		{"log then hook", []step{L, H}, 1, 1},
		{"three attempts, one summary line", []step{H, H, H, L}, 3, 3},
		{"log only (hook not wired)", []step{L, L}, 2, 0},
		{"hook only", []step{H, H}, 2, 2},
		{"pairs one to one", []step{H, L, L, H}, 2, 2},
		{"older than findtime does not pair", []step{H, {wait: 11 * time.Minute}, L}, 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, clk := newGuard(t, both, plain)
			for _, s := range tc.steps {
				switch {
				case s.wait > 0:
					clk.Add(s.wait)
				case s.hook:
					if _, err := g.Fail(ctx, a, "alice", "imap", ""); err != nil {
						t.Fatal(err)
					}
				default:
					if _, _, err := g.LogFailure(ctx, both.Name, a, "alice", src); err != nil {
						t.Fatal(err)
					}
				}
			}
			st, err := g.Status(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(st, func(s JailStatus) bool { return s.Name == both.Name })
			j := slices.IndexFunc(st, func(s JailStatus) bool { return s.Name == plain.Name })
			if got := st[i].TotalFailed; got != int64(tc.both) {
				t.Errorf("jail with hook and log counted %d, want %d", got, tc.both)
			}
			if got := st[j].TotalFailed; got != int64(tc.all) {
				t.Errorf("jail without logs counted %d, want %d", got, tc.all)
			}
		})
	}
}

func TestOnceLedgerBounded(t *testing.T) {
	var l onceLedger
	j := &Jail{Name: "j", FindTime: time.Minute}
	now := time.Now()
	for i := range maxOnceKeys + 10 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		l.take(j, a, fromHook, now)
	}
	if n := len(l.m); n > maxOnceKeys {
		t.Errorf("ledger holds %d keys, want at most %d", n, maxOnceKeys)
	}
	a := netip.MustParseAddr("192.0.2.1")
	for range maxOnceTimes * 2 {
		l.take(j, a, fromHook, now)
	}
	if n := len(l.m["j|192.0.2.1"].times); n != maxOnceTimes {
		t.Errorf("one address holds %d reports, want %d", n, maxOnceTimes)
	}
}

// Log matches from a shared address count but never ban it in a jail keyed
// by address, as hook events do.
func TestLogFailureSharedAddress(t *testing.T) {
	clk := fakeclock.New(time.Now())
	st, err := memstore.Open(memstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	g := sharedGuard(t, st, clk, postfixLogJail)
	ctx := context.Background()
	web := netip.MustParseAddr("203.0.113.80")
	for _, u := range []string{"alice@example.org", "bob@example.org", "carol@example.org"} {
		if err := g.Succeed(ctx, web, u); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 * postfixLogJail.MaxRetry {
		bans, counted, err := g.LogFailure(ctx, "postfix", web, "", "log:/var/log/mail.log:postfix")
		if err != nil || !counted || len(bans) > 0 {
			t.Fatalf("LogFailure #%d from a shared address = %v, %v, %v; want counted, no ban", i+1, bans, counted, err)
		}
	}
}
