//go:build measure

package e2e

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/mailguard/mailguard/internal/netnstest"
)

// TestFirewallMeasureFailureToKernel measures the time from the answer to
// the failure report that reaches maxretry to the ban being in the kernel's
// nftables set, over distinct addresses: MAILGUARD_E2E_MEASURE_N bans,
// default 200. It is built only with -tags measure.
func TestFirewallMeasureFailureToKernel(t *testing.T) {
	count := 200
	if s := os.Getenv("MAILGUARD_E2E_MEASURE_N"); s != "" {
		var err error
		if count, err = strconv.Atoi(s); err != nil || count < 1 || count > 60000 {
			t.Fatalf("MAILGUARD_E2E_MEASURE_N=%q: want 1..60000", s)
		}
	}
	n := newFWNet(t)
	// Reconcile at its default (1m): only the event path puts bans in.
	// No blast-radius cap: the bans come faster than 60 a minute on purpose.
	d := n.newDaemon(t, "nftables", "firewall.reconcile_interval=1m", "log.level=info", "safety.max_bans_per_minute=0")
	d.Start()

	f, err := os.Open(netnstest.Path(n.Server))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseLasting()
	table := &nftables.Table{Name: "mailguard", Family: nftables.TableFamilyINet}

	// A look lists the set; a ban found by a look is timed at the look's end
	// (an upper bound). late are the bans the first look missed.
	var fromAnswer, fromRequest, late []time.Duration
	var set *nftables.Set
	for i := range count {
		a := netip.AddrFrom4([4]byte{10, 202, byte(i / 250), byte(i%250 + 1)})
		login := fmt.Sprintf("u%d@example.org", i)
		n.report(t, d, a, login)
		n.report(t, d, a, login)
		sent := time.Now()
		n.report(t, d, a, login)
		answered := time.Now()
		polls := 0
		for {
			if set == nil {
				set = findBanSet(conn, table)
			}
			if set != nil && inSet(t, conn, set, a) {
				break
			}
			polls++
			if time.Since(answered) > 10*time.Second {
				t.Fatalf("ban %d (%v) not in the kernel after 10s", i, a)
			}
		}
		now := time.Now()
		fromAnswer = append(fromAnswer, now.Sub(answered))
		fromRequest = append(fromRequest, now.Sub(sent))
		if polls > 0 {
			late = append(late, now.Sub(answered))
		}
	}
	// What one look at the set costs (the resolution of the figures above).
	var looks []time.Duration
	for range 50 {
		s := time.Now()
		inSet(t, conn, set, fwCli4)
		looks = append(looks, time.Since(s))
	}
	t.Logf("failure→kernel, from the report's answer: %s", durSummary(fromAnswer))
	t.Logf("failure→kernel, from sending the report:  %s", durSummary(fromRequest))
	t.Logf("in the set at the first look after the answer: %d of %d; one look: %s", count-len(late), count, durSummary(looks))
	if len(late) > 0 {
		t.Logf("the others, from the answer: %s", durSummary(late))
	}
}

// findBanSet returns mailguard's IPv4 /32 set, or nil while it has none.
func findBanSet(conn *nftables.Conn, table *nftables.Table) *nftables.Set {
	sets, err := conn.GetSets(table)
	if err != nil {
		return nil // no table yet
	}
	for _, s := range sets {
		if strings.HasPrefix(s.Name, "ban4_32_") {
			return s
		}
	}
	return nil
}

func inSet(t *testing.T, conn *nftables.Conn, set *nftables.Set, a netip.Addr) bool {
	t.Helper()
	elems, err := conn.GetSetElements(set)
	if err != nil {
		t.Fatalf("set %s elements: %v", set.Name, err)
	}
	key := a.AsSlice()
	return slices.ContainsFunc(elems, func(e nftables.SetElement) bool { return bytes.Equal(e.Key, key) })
}

func durSummary(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(p float64) time.Duration { return s[min(len(s)-1, int(float64(len(s))*p))].Round(time.Microsecond) }
	return fmt.Sprintf("p50 %v p90 %v p99 %v max %v (n=%d)", at(.5), at(.9), at(.99), at(1), len(s))
}
