package redisstore_test

import (
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
	"github.com/mailguard/mailguard/store/storetest"
)

// TestConformance runs the shared suite against one redis-server, a fresh
// prefix per subtest.
func TestConformance(t *testing.T) {
	addr := redistest.Start(t)
	storetest.Run(t, func(t *testing.T, now func() time.Time) store.Store {
		return open(t, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(t), Now: now, Node: "a"})
	})
}

// TestConformanceCluster runs the suite against a three-master Redis
// Cluster. Each subtest's prefix is its own hash tag, so the subtests land
// on different masters and the client follows MOVED redirections.
func TestConformanceCluster(t *testing.T) {
	testenv.Long(t, "starts a Redis Cluster")
	addrs := redistest.StartCluster(t, 3)
	storetest.Run(t, func(t *testing.T, now func() time.Time) store.Store {
		return open(t, redisstore.Options{Addrs: addrs, Prefix: freshPrefix(t), Now: now, Node: "a"})
	})
}
