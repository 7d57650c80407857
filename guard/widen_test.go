package guard

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
)

func widenGuard(t *testing.T, st store.Store, clk *fakeclock.Clock) *Guard {
	t.Helper()
	g, err := New(st, Config{
		Jails: []Jail{authJail}, Prefixes: Prefixes{IPv4: 32, IPv6: 64}, Now: clk.Now,
		Widen: []WidenStep{{Bits: 56, Bans: 4, Window: 10 * time.Minute}, {Bits: 48, Bans: 2, Window: time.Hour}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// Four /64s of one /56 banned within the window ban the /56, and two /56s
// of one /48 the /48; a /64 banned twice counts once; a /56 where a user
// has a known device is never banned whole.
func TestWidenIPv6(t *testing.T) {
	for _, sk := range storeKinds {
		t.Run(sk.name, func(t *testing.T) {
			ctx := context.Background()
			clk := fakeclock.New(time.Now().Truncate(time.Millisecond))
			g := widenGuard(t, sk.open(t, clk.Now)(0), clk)
			banSubnet := func(p string, n int) []store.Ban {
				t.Helper()
				var all []store.Ban
				for i := range n {
					a := netip.MustParseAddr(fmt.Sprintf(p, i))
					for range authJail.MaxRetry {
						bans, err := g.Fail(ctx, a, "", "imap", "")
						if err != nil {
							t.Fatal(err)
						}
						all = append(all, bans...)
					}
					clk.Add(time.Second)
				}
				return all
			}
			bans := banSubnet("2001:db8:ab00:%x::1", 3)
			if len(bans) != 3 {
				t.Fatalf("3 /64s: %d bans, want 3 (no widening yet)", len(bans))
			}
			// The same /64 banned again (after an unban) counts once.
			if _, err := g.Unban(ctx, "2001:db8:ab00:2::/64"); err != nil {
				t.Fatal(err)
			}
			if bans := banSubnet("2001:db8:ab00:2::%x", 1); len(bans) != 1 {
				t.Fatalf("a /64 banned twice: %v, want its ban alone", bans)
			}
			bans = banSubnet("2001:db8:ab00:1%x::1", 1)
			if len(bans) != 2 || bans[1].Subject != "net:2001:db8:ab00::/56" {
				t.Fatalf("4th /64: bans %v, want it and the /56", bans)
			}
			mustRefused(t, g, "2001:db8:ab00:ff::9", "", true)
			mustRefused(t, g, "2001:db8:ab01::9", "", false)

			// A second /56 in the /48: the /48 too.
			bans = banSubnet("2001:db8:ab00:2%02x::1", 4)
			if n := len(bans); n != 6 || bans[4].Subject != "net:2001:db8:ab00:200::/56" || bans[5].Subject != "net:2001:db8:ab00::/48" {
				t.Fatalf("second /56: bans %v, want 4 /64s, the /56 and the /48", bans)
			}
			mustRefused(t, g, "2001:db8:ab00:ffff::1", "", true)

			// A user's known device inside: never wider than its /64.
			if err := g.Succeed(ctx, netip.MustParseAddr("2001:db8:1:cd07::5"), "alice@example.org"); err != nil {
				t.Fatal(err)
			}
			if bans := banSubnet("2001:db8:1:cd0%x::1", 6); len(bans) != 6 {
				t.Errorf("/56 with a known device: bans %v, want the 6 /64s alone", bans)
			}
			mustRefused(t, g, "2001:db8:1:cd07::5", "alice@example.org", false)

			// The widened prefix is a target: unban lifts it.
			if lifted, err := g.Unban(ctx, "2001:db8:ab00::/56"); err != nil || len(lifted) != 1 {
				t.Errorf("Unban(/56) = %v, %v; want the /56 ban", lifted, err)
			}
		})
	}
}
