//go:build measure

package firewall

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// TestMeasure prints the figures of the README: how fast a ban is in force,
// what 100,000 bans cost, and what they do to connection latency, for each
// backend. It is built only with -tags measure (about two minutes);
// every loop is bounded.
func TestMeasure(t *testing.T) {
	testenv.Root(t)
	t.Run("nftables", measureNFT)
	t.Run("ipset", func(t *testing.T) { measureIPT(t) })
}

func pct(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func summary(ds []time.Duration) string {
	return fmt.Sprintf("p50 %v p99 %v max %v (n=%d)", pct(ds, .5).Round(time.Microsecond), pct(ds, .99).Round(time.Microsecond), pct(ds, 1).Round(time.Microsecond), len(ds))
}

// addLatency times n Adds of single fresh bans (each on its own batch).
func addLatency(t *testing.T, b Backend, n int, base int) []time.Duration {
	ctx := testCtx(t)
	exp := time.Now().Add(time.Hour)
	var ds []time.Duration
	for i := range n {
		e := Entry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte((base + i) >> 8), byte(base + i)}), 32), Ports: mailGroup, Expires: exp}
		start := time.Now()
		if err := b.Add(ctx, []Entry{e}); err != nil {
			t.Fatalf("Add: %v", err)
		}
		ds = append(ds, time.Since(start))
	}
	return ds
}

// inForce checks, a few times, that the client's first connection after Add
// returns is dropped: the ban is in force when Add returns.
func inForce(t *testing.T, n *testNet, b Backend, rounds int) {
	ctx := testCtx(t)
	e := Entry{Prefix: pfx("10.200.0.2/32"), Ports: mailGroup, Expires: time.Now().Add(time.Hour)}
	var ds []time.Duration
	for range rounds {
		start := time.Now()
		if err := b.Add(ctx, []Entry{e}); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		n.WantDropped(t, cli4, mailPort)
		if err := b.Remove(ctx, []Entry{e}); err != nil {
			t.Fatal(err)
		}
		n.WantOpen(t, cli4, mailPort)
	}
	t.Logf("ban in force on return from Add, %d/%d rounds: Add %s", rounds, rounds, summary(ds))
}

// connectLatency times n TCP handshakes of an allowed client to the mail port.
func connectLatency(t *testing.T, n *testNet, count int) string {
	var ds []time.Duration
	for range count {
		start := time.Now()
		if err := n.Dial(cli6b, mailPort, 2*time.Second); err != nil {
			t.Fatalf("allowed client: %v", err)
		}
		ds = append(ds, time.Since(start))
	}
	return summary(ds)
}

func meminfo(t *testing.T) map[string]int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		m[k] = n
	}
	return m
}

func rssKB(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func measureNFT(t *testing.T) {
	n := newTestNet(t)
	b := open(t, n, "NewNFTables", func() (*NFTables, error) { return NewNFTables(testCtx(t), Options{Log: testLog(t)}) })
	t.Logf("connect, 0 bans: %s", connectLatency(t, n, 300))
	inForce(t, n, b, 20)
	t.Logf("Add (one ban, one batch), 0..1000 bans held: %s", summary(addLatency(t, b, 1000, 0)))
	if got, err := b.List(testCtx(t)); err != nil || len(got) != 1000 {
		t.Fatalf("List after 1000 Adds = %d entries, %v", len(got), err)
	}

	const big = 100_000
	exp := time.Now().Add(time.Hour)
	es := manyEntries(big, exp)
	runtime.GC()
	m0, r0 := meminfo(t), rssKB(t)
	start := time.Now()
	if err := b.Sync(testCtx(t), es); err != nil {
		t.Fatalf("Sync %d: %v", big, err)
	}
	took := time.Since(start)
	time.Sleep(time.Second) // let the kernel settle its slabs
	m1, r1 := meminfo(t), rssKB(t)
	es = nil
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("Sync of %d bans (one batch): %v; kernel Slab +%d MB, MemAvailable −%d MB; process RSS %d → %d MB, Go heap in use after GC %d MB",
		big, took.Round(time.Millisecond), (m1["Slab"]-m0["Slab"])>>10, (m0["MemAvailable"]-m1["MemAvailable"])>>10, r0>>10, r1>>10, ms.HeapInuse>>20)
	es = manyEntries(big, exp) // the same entries again, after the heap figures
	start = time.Now()
	wantList(t, b, es, took)
	t.Logf("List of %d bans (and the check that they are exactly the ones synced): %v", big, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	if err := b.Sync(testCtx(t), es); err != nil {
		t.Fatal(err)
	}
	t.Logf("Sync of %d bans, nothing to change: %v", big, time.Since(start).Round(time.Millisecond))
	t.Logf("connect, %d bans: %s", big, connectLatency(t, n, 300))
	inForce(t, n, b, 10)
	t.Logf("Add (one ban, one batch), %d bans held: %s", big, summary(addLatency(t, b, 1000, 1000)))
	if err := b.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func measureIPT(t *testing.T) {
	n := newTestNet(t)
	b := open(t, n, "NewIPTables", func() (*IPTables, error) { return NewIPTables(testCtx(t), Options{Log: testLog(t)}) })
	t.Logf("connect, 0 bans: %s", connectLatency(t, n, 300))
	inForce(t, n, b, 10)
	t.Logf("Add, about 0 bans held: %s", summary(addLatency(t, b, 100, 0)))
	sizes := []int{100_000}
	held := 0
	for _, size := range sizes {
		es := manyEntries(size, time.Now().Add(time.Hour))[held:]
		start := time.Now()
		runtime.GC()
		m0 := meminfo(t)
		if err := b.Sync(testCtx(t), es); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		time.Sleep(time.Second)
		m1 := meminfo(t)
		t.Logf("Sync of %d bans into ipsets: %v; kernel Slab +%d MB, MemAvailable −%d MB",
			size, time.Since(start).Round(time.Millisecond), (m1["Slab"]-m0["Slab"])>>10, (m0["MemAvailable"]-m1["MemAvailable"])>>10)
		held = size
		t.Logf("connect, %d bans: %s", size, connectLatency(t, n, 200))
		start = time.Now()
		got, err := b.List(testCtx(t))
		if err != nil || len(got) < size {
			t.Fatalf("List = %d entries, %v; want %d", len(got), err, size)
		}
		t.Logf("List of %d bans: %v", size, time.Since(start).Round(time.Millisecond))
		ds := addLatency(t, b, 10, 2000+size%1000)
		t.Logf("Add, %d bans held: %s", size, summary(ds))
		if pct(ds, .5) > 5*time.Second {
			t.Logf("stopping: an Add takes over 5s")
			break
		}
	}
	start := time.Now()
	if err := b.Flush(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	t.Logf("Flush: %v", time.Since(start).Round(time.Millisecond))
}
