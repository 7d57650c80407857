package redisstore_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

const tracked = 100_000

func usedMemory(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatal("no used_memory in INFO memory")
	return 0
}

func memoryUsage(t *testing.T, c *redis.Client, key string) int64 {
	t.Helper()
	n, err := c.MemoryUsage(context.Background(), key, 0).Result()
	if err != nil {
		t.Fatalf("MEMORY USAGE %s: %v", key, err)
	}
	return n
}

// parallel runs fn(i) for i in [0, n) on 16 goroutines.
func parallel(t *testing.T, n int, fn func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	var once sync.Once
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				if err := fn(i); err != nil {
					once.Do(func() { t.Errorf("call %d: %v", i, err) })
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestMemoryPerAddress measures what Redis spends per tracked address (one
// failure in a window) and per ban, at 100,000 of each, with the default
// prefix and realistic subjects. It logs the figures and fails only if they
// are far off the measured ones (a schema change that bloats keys).
func TestMemoryPerAddress(t *testing.T) {
	testenv.Long(t, "200,000 calls")
	addr := redistest.Start(t)
	clk := newClock()
	// Generous timeouts: this measures memory, and 16 goroutines on a loaded
	// machine under -race must not lose calls to the 300 ms defaults.
	s := open(t, redisstore.Options{Addrs: []string{addr}, Now: clk.Now, Node: "mx1",
		DialTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	ctx := context.Background()
	subject := func(i int) string { return fmt.Sprintf("net:10.%d.%d.%d/32", i>>16&255, i>>8&255, i&255) }
	if _, err := s.Hit(ctx, store.Hit{Jail: "warm", Subject: "x", Span: time.Minute, MaxRetry: 9}); err != nil {
		t.Fatal(err)
	}

	start, base := time.Now(), usedMemory(t, admin)
	parallel(t, tracked, func(i int) error {
		_, err := s.Hit(ctx, store.Hit{Jail: "dovecot", Subject: subject(i), Span: 10 * time.Minute, MaxRetry: 5, BanTime: time.Hour})
		return err
	})
	perAddr := (usedMemory(t, admin) - base) / tracked
	shard := "mailguard:{mailguard}:w:dovecot|7"
	window := memoryUsage(t, admin, shard)
	fields, err := admin.HLen(ctx, shard).Result()
	if err != nil || fields == 0 {
		t.Fatalf("HLEN %s = %d, %v", shard, fields, err)
	}
	t.Logf("%d tracked addresses in %v: %d bytes each (used_memory delta); MEMORY USAGE: window shard %d for %d addresses",
		tracked, time.Since(start).Round(time.Millisecond), perAddr, window, fields)

	rec := store.Recidive{Window: 24 * time.Hour, Factor: 2, MaxTime: 24 * time.Hour}
	start, base = time.Now(), usedMemory(t, admin)
	parallel(t, tracked, func(i int) error {
		r, err := s.Hit(ctx, store.Hit{Jail: "postfix", Subject: subject(i + tracked), Span: 10 * time.Minute, MaxRetry: 1,
			BanTime: time.Hour, Recidive: rec, Reason: "smtp-abuse smtp"})
		if err == nil && r.Ban == nil {
			err = fmt.Errorf("no ban")
		}
		return err
	})
	perBan := (usedMemory(t, admin) - base) / tracked
	ban := memoryUsage(t, admin, "mailguard:{mailguard}:b:"+subject(1+tracked))
	var bx int64
	for n := range 1024 { // the ban index shards
		bx += memoryUsage(t, admin, fmt.Sprintf("mailguard:{mailguard}:bx:%d", n))
	}
	stream := memoryUsage(t, admin, "mailguard:{mailguard}:ev")
	xlen, _ := admin.XLen(ctx, "mailguard:{mailguard}:ev").Result()
	t.Logf("%d bans in %v: %d bytes each (used_memory delta); MEMORY USAGE: ban hash (with its recidive history) %d, ban index %d/ban, event stream %d in all (%d entries, bounded)",
		tracked, time.Since(start).Round(time.Millisecond), perBan, ban, bx/tracked, stream, xlen)

	bans, err := s.Bans(ctx)
	if err != nil || len(bans) != tracked {
		t.Errorf("Bans() = %d bans, %v; want %d", len(bans), err, tracked)
	}
	// README's figures: ~40 bytes per tracked address, ~320 per ban.
	if perAddr > 100 || perBan > 450 {
		t.Errorf("memory per address %d B or per ban %d B is far above README's ~40/~320", perAddr, perBan)
	}
}
