package guard

import (
	"context"
	"net/netip"
	"testing"
)

// BenchmarkPostfixPath measures what policyd asks of the guard for one
// recipient of an authenticated sender: Check, then Recipient, on the
// embedded store, for IPv4 and IPv6 clients.
func BenchmarkPostfixPath(b *testing.B) {
	for _, tc := range []struct{ name, addr string }{
		{"ipv4", "198.51.100.7"},
		{"ipv6", "2001:db8:1:2::7"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			rate := rateJail
			rate.MaxRetry = 1 << 30 // under the limit: the common case, and no log lines
			g, _ := newGuard(b, authJail, userJail, rate)
			a := netip.MustParseAddr(tc.addr)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if banned, _, err := g.Check(ctx, a, "alice@example.org"); err != nil || banned != "" {
					b.Fatalf("Check = %q, %v", banned, err)
				}
				if _, err := g.Recipient(ctx, a, "alice@example.org"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
