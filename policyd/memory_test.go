package policyd

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestConnectionsMemoryBounded: MaxConns connections, each with the largest
// request it may send all but finished, cost a bounded amount each, and
// the fold of recipient requests is bounded. README quotes the figures.
func TestConnectionsMemoryBounded(t *testing.T) {
	const conns = 200
	s := &Server{Guard: newFake(), MaxConns: conns}
	addr := start(t, s, "tcp")
	before := heapInUse()
	var req strings.Builder
	for i := 0; req.Len() < DefaultMaxBytes-2*DefaultMaxLineLen; i++ {
		fmt.Fprintf(&req, "a%d=%s\n", i, strings.Repeat("x", DefaultMaxLineLen-10))
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range conns {
		c := dial(t, "tcp", addr)
		held = append(held, c.c)
		if _, err := c.c.Write([]byte(req.String())); err != nil {
			t.Fatal(err)
		}
	}
	// The server has read every byte when the kernel holds none: wait for
	// the heap to stop growing instead of peeking at the sockets.
	var grown int64
	for range 50 {
		time.Sleep(20 * time.Millisecond)
		g := int64(heapInUse()) - int64(before)
		if g > 0 && g == grown {
			break
		}
		grown = g
	}
	per := grown / conns
	t.Logf("%d connections with %d KB unfinished requests: heap +%d KB, %d KB each", conns, req.Len()>>10, grown>>10, per>>10)
	if per > 256<<10 {
		t.Errorf("a connection costs %d KB, want under 256 KB", per>>10)
	}

	f := newFold()
	before = heapInUse()
	now := time.Now()
	for i := range uint64(maxFolded + 1000) {
		f.remember(i, DefaultDeferAction, VerdictDefer, now)
	}
	grown = int64(heapInUse()) - int64(before)
	t.Logf("fold full (%d requests): heap +%d KB", maxFolded, grown>>10)
	if grown > 16<<20 {
		t.Errorf("a full fold takes %d MB, want under 16 MB", grown>>20)
	}
	runtime.KeepAlive(f)
}
