package memstore

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store"
)

// liveHeap is the heap in use after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestMemoryPerFailure measures the live heap per tracked subject: 100,000
// addresses with one failure (the dovecot jail), and 100,000 user+prefix
// windows with one distinct-password failure each (dovecot-user, with
// guard's Member: prefix|user|password hash). It logs the figures and fails
// only well above README's (~160 and ~200 bytes): a layout change that bloats
// windows.
func TestMemoryPerFailure(t *testing.T) {
	testenv.Long(t, "200,000 hits")
	const n = 100_000
	s, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	cases := []struct {
		name  string
		hit   func(i int) store.Hit
		limit uint64
	}{
		{"address", func(i int) store.Hit {
			return store.Hit{Jail: "dovecot", Subject: fmt.Sprintf("net:10.%d.%d.%d/32", i>>16&255, i>>8&255, i&255),
				Span: 10 * time.Minute, MaxRetry: 5, BanTime: time.Hour}
		}, 240},
		{"address+user, distinct passwords", func(i int) store.Hit {
			user := fmt.Sprintf("user%d@example.org", i)
			prefix := fmt.Sprintf("10.%d.%d.0/24", i>>16&255, i>>8&255)
			return store.Hit{Jail: "dovecot-user", Subject: "user+net:" + user + "|" + prefix,
				Member: prefix + "|" + user + "|" + fmt.Sprintf("%064x", i), Span: time.Hour, MaxRetry: 20, BanTime: time.Hour}
		}, 300},
	}
	for _, c := range cases {
		before := liveHeap()
		for i := range n {
			// The subject is made here, as guard makes one per request:
			// what the store keeps of it counts.
			if _, err := s.Hit(ctx, c.hit(i)); err != nil {
				t.Fatal(err)
			}
		}
		per := (liveHeap() - before) / n
		t.Logf("%s: %d bytes live per tracked subject", c.name, per)
		if per > c.limit {
			t.Errorf("%s: %d bytes per tracked subject, want at most %d", c.name, per, c.limit)
		}
	}
	runtime.KeepAlive(s)
}
