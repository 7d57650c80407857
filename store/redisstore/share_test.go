package redisstore_test

import (
	"testing"
	"time"

	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// A shared address learnt on one node is shared on every node of the site.
func TestShareAcrossNodes(t *testing.T) {
	addr := redistest.Start(t)
	prefix := freshPrefix(t)
	a := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: prefix, Node: "a"})
	b := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: prefix, Node: "b"})
	const sub, span, limit = "net:192.0.2.80/32", time.Hour, 2
	if _, err := a.Share(t.Context(), sub, "alice", span, limit); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Share(t.Context(), sub, "bob", span, limit); err != nil || n != 2 {
		t.Fatalf("Share on node b = %d, %v; want 2 (alice from node a, bob)", n, err)
	}
	if n, err := a.Sharers(t.Context(), sub, span); err != nil || n != 2 {
		t.Errorf("Sharers on node a = %d, %v; want 2", n, err)
	}
	got, err := a.Shared(t.Context(), span, limit)
	if err != nil || got[sub] != 2 || len(got) != 1 {
		t.Errorf("Shared on node a = %v, %v; want %s: 2", got, err, sub)
	}
}
