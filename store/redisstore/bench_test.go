package redisstore_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// BenchmarkCheck is guard's Check of a logged-in client: four subjects, a
// known-device key and two windows, against a real redis-server on loopback,
// from GOMAXPROCS×4 goroutines (-cpu to vary).
func BenchmarkCheck(b *testing.B) {
	addr := redistest.Start(b)
	s := open(b, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(b)})
	ctx := context.Background()
	for i := range 1000 { // some bans and failures to find
		sub := fmt.Sprintf("net:198.51.%d.%d/32", i/256, i%256)
		if _, err := s.Hit(ctx, store.Hit{Jail: "dovecot", Subject: sub, Span: 10 * time.Minute, MaxRetry: 1 + i%3, BanTime: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	var n atomic.Int64
	b.SetParallelism(4)
	defer reportServerTime(b, addr)()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1) % 1000
			ip := fmt.Sprintf("198.51.%d.%d", i/256, i%256)
			q := store.Query{
				Subjects: []string{"net:" + ip + "/32", "net:198.51.0.0/24", "user:alice@example.org", "user+net:alice@example.org|198.51.0.0/24"},
				Known:    "user+net:alice@example.org|198.51.0.0/24",
				Counts: []store.Window{
					{Jail: "dovecot", Subject: "net:" + ip + "/32", Span: 10 * time.Minute},
					{Jail: "dovecot-user", Subject: "user:alice@example.org", Span: time.Hour},
				},
			}
			if _, err := s.Check(ctx, q); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHit records failures of 10,000 addresses with maxretry 5 (one in
// five hits bans, with escalation and an event), in parallel.
func BenchmarkHit(b *testing.B) {
	addr := redistest.Start(b)
	s := open(b, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(b)})
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(4)
	defer reportServerTime(b, addr)()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1) % 10000
			h := store.Hit{Jail: "dovecot", Subject: fmt.Sprintf("net:203.0.%d.%d/32", i/256, i%256), Span: 10 * time.Minute,
				MaxRetry: 5, BanTime: time.Hour, Recidive: store.Recidive{Window: 24 * time.Hour, Factor: 2, MaxTime: 24 * time.Hour},
				Reason: "auth-failure imap"}
			if _, err := s.Hit(ctx, h); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// reportServerTime resets the timer and Redis's command statistics; the
// function it returns reports Redis's own CPU time per EVALSHA
// (redis-µs/op): what bounds one Redis (or one Cluster master) in the end.
func reportServerTime(b *testing.B, addr string) func() {
	b.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	ctx := context.Background()
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	return func() {
		b.StopTimer()
		defer c.Close()
		info, err := c.Info(ctx, "commandstats").Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, line := range strings.Split(info, "\n") {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:"); ok {
				for _, kv := range strings.Split(rest, ",") {
					if v, ok := strings.CutPrefix(kv, "usec_per_call="); ok {
						f, _ := strconv.ParseFloat(v, 64)
						b.ReportMetric(f, "redis-µs/op")
					}
				}
			}
		}
	}
}

// BenchmarkCheckAlone is one caller at a time: the latency of an idle
// node's check, which auto-pipelining must not delay (it goes out at once).
func BenchmarkCheckAlone(b *testing.B) {
	addr := redistest.Start(b)
	s := open(b, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(b)})
	ctx := context.Background()
	q := store.Query{
		Subjects: []string{"net:198.51.100.7/32", "user:alice@example.org"},
		Counts:   []store.Window{{Jail: "dovecot", Subject: "net:198.51.100.7/32", Span: 10 * time.Minute}},
	}
	if _, err := s.Check(ctx, q); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Check(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
}
