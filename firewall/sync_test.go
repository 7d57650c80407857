package firewall

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

var mailGroup = []uint16{110, 143, 465, 587, 993, 995}

// manyEntries returns n bans, half IPv4 /32 in 100.64.0.0/10, half IPv6 /64
// in 2001:db8::/32; none covers the test clients.
func manyEntries(n int, exp time.Time) []Entry {
	es := make([]Entry, 0, n)
	for i := range n {
		var p netip.Prefix
		if i%2 == 0 {
			j := i / 2
			p = netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64 + byte(j>>16&0x3f), byte(j >> 8), byte(j)}), 32)
		} else {
			j := i / 2
			p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(j >> 24), byte(j >> 16), byte(j >> 8), byte(j)}), 64)
		}
		es = append(es, Entry{Prefix: p, Ports: mailGroup, Expires: exp})
	}
	return es
}

// wantList fails the test unless b holds exactly want: the same prefixes,
// each with its ports and its expiry. The kernel counts an element's timeout
// from when it applies it, so an expiry may come later than wanted by as
// long as the Sync took (late, the slack), and either way by the kernel's
// rounding (expiryTolerance).
func wantList(t *testing.T, b Backend, want []Entry, late time.Duration) {
	t.Helper()
	got, err := b.List(testCtx(t))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	key := func(e Entry) string { return fmt.Sprint(e.Prefix, e.Ports) }
	have := make(map[string]Entry, len(got))
	for _, e := range got {
		if _, dup := have[key(e)]; dup {
			t.Errorf("List holds %v twice", e)
		}
		have[key(e)] = e
	}
	var missing, wrong []string
	for _, w := range want {
		h, ok := have[key(w)]
		switch {
		case !ok:
			missing = append(missing, w.String())
		case h.Expires.Before(w.Expires.Add(-expiryTolerance)) || h.Expires.After(w.Expires.Add(late+expiryTolerance)):
			wrong = append(wrong, fmt.Sprintf("%v expires %v, want %v (+%v)", w.Prefix, h.Expires, w.Expires, late))
		}
		delete(have, key(w))
	}
	var extra []string
	for _, e := range have {
		extra = append(extra, e.String())
	}
	for what, l := range map[string][]string{"missing": missing, "wrong expiry": wrong, "not synced": extra} {
		if len(l) > 0 {
			slices.Sort(l)
			t.Errorf("List after Sync: %d %s, e.g. %s", len(l), what, strings.Join(l[:min(len(l), 5)], "; "))
		}
	}
}

// syncSize is as many bans as CI affords per backend; `-tags measure` syncs
// 100,000 (measure_test.go) with the same check.
const syncSize = 5000

// TestSyncList, for nftables and iptables (ipset): Sync of syncSize bans (IPv4 and IPv6, two port groups, their
// own expiries) and List returns exactly them; a second Sync that drops a
// fifth, adds as many, moves expiries and ports leaves exactly the new set;
// an empty Sync leaves nothing.
func TestSyncList(t *testing.T) {
	testenv.Root(t)
	for _, h := range []struct {
		name string
		open func(t *testing.T, n *testNet) Backend
	}{
		{"nftables", func(t *testing.T, n *testNet) Backend {
			return open(t, n, "NewNFTables", func() (*NFTables, error) { return NewNFTables(testCtx(t), Options{Log: testLog(t)}) })
		}},
		{"iptables", func(t *testing.T, n *testNet) Backend {
			testenv.Command(t, "iptables")
			testenv.Command(t, "ipset")
			return open(t, n, "NewIPTables", func() (*IPTables, error) { return NewIPTables(testCtx(t), Options{Log: testLog(t)}) })
		}},
	} {
		t.Run(h.name, func(t *testing.T) {
			n := newTestNet(t)
			b := h.open(t, n)
			now := time.Now()
			es := manyEntries(syncSize+syncSize/5, now.Add(time.Hour))
			for i := range es {
				es[i].Expires = es[i].Expires.Add(time.Duration(i%600) * time.Second)
				if i%3 == 0 {
					es[i].Ports = []uint16{25, 465, 587}
				}
			}
			first := es[:syncSize]
			start := time.Now()
			if err := b.Sync(testCtx(t), first); err != nil {
				t.Fatalf("Sync of %d: %v", len(first), err)
			}
			took := time.Since(start)
			t.Logf("Sync of %d bans: %v", len(first), took.Round(time.Millisecond))
			wantList(t, b, first, took)

			// Drop the first fifth, add a fifth, renew some, move some to
			// the other port group.
			second := slices.Clone(es[syncSize/5:])
			for i := range second {
				e := &second[i]
				switch i % 7 {
				case 1:
					e.Expires = e.Expires.Add(30 * time.Minute)
				case 2:
					if len(e.Ports) == 3 {
						e.Ports = mailGroup
					} else {
						e.Ports = []uint16{25, 465, 587}
					}
				}
			}
			start = time.Now()
			if err := b.Sync(testCtx(t), second); err != nil {
				t.Fatalf("second Sync: %v", err)
			}
			took = time.Since(start)
			t.Logf("second Sync of %d bans: %v", len(second), took.Round(time.Millisecond))
			wantList(t, b, second, took)

			if err := b.Sync(testCtx(t), nil); err != nil {
				t.Fatalf("empty Sync: %v", err)
			}
			wantList(t, b, nil, 0)
		})
	}
}
