package redisstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// TestMemoryPerAuditedSubject measures what Redis spends per audited
// subject: 20,000 attacking addresses with a full trail (10 events of a
// realistic 240 bytes, the default maxretry 5 × 2), each event also kept
// by its id. It logs the figure and fails only far above README's.
func TestMemoryPerAuditedSubject(t *testing.T) {
	testenv.Long(t, "200,000 audit records")
	const n, keep = 20_000, 10
	addr := redistest.Start(t)
	s := open(t, redisstore.Options{Addrs: []string{addr}, Node: "mx1",
		DialTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	ctx := context.Background()
	base := usedMemory(t, admin)
	parallel(t, n, func(i int) error {
		sub := fmt.Sprintf("net:10.%d.%d.%d/32", i>>16&255, i>>8&255, i&255)
		recs := make([]store.AuditRecord, keep)
		for j := range keep {
			recs[j] = store.AuditRecord{ID: fmt.Sprintf("%05dx%04d", i, j), Subjects: []string{sub},
				Data: fmt.Appendf(nil, `{"v":1,"id":"%05dx%04d","time":"2026-11-29T08:00:20.123456789Z","node":"mx1","kind":"failure","source":"dovecot","event":"auth-failure","protocol":"imap","addr":"10.%d.%d.%d","user":"h:3f2a9c0d1e4b5a67","jails":["dovecot","dovecot-user"],"count":%d}`,
					i, j, i>>16&255, i>>8&255, i&255, j+1), Keep: keep, TTL: time.Hour}
		}
		return s.Append(ctx, recs)
	})
	per := (usedMemory(t, admin) - base) / n
	trail := memoryUsage(t, admin, "mailguard:{mailguard}:au:net:10.0.0.7/32")
	id := memoryUsage(t, admin, "mailguard:{mailguard}:ai:00007x0003")
	t.Logf("audit: %d bytes per subject with %d events (used_memory delta); MEMORY USAGE: trail list %d, one id record %d", per, keep, trail, id)
	if per > 8000 {
		t.Errorf("%d bytes per audited subject, far above README's", per)
	}
}

// A trail keeps ids; Trail reads their records, oldest first, leaves out
// the ids whose record has expired, and still reads a whole record that an
// earlier version kept in the trail itself.
func TestTrailLayout(t *testing.T) {
	addr := redistest.Start(t)
	s := open(t, redisstore.Options{Addrs: []string{addr}, Node: "mx1"})
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	ctx := context.Background()
	const sub = "net:192.0.2.7/32"
	key := "mailguard:{mailguard}:au:" + sub
	legacy := `{"v":1,"id":"old0000001","kind":"failure"}`
	if err := admin.RPush(ctx, key, legacy).Err(); err != nil {
		t.Fatal(err)
	}
	var recs []store.AuditRecord
	for i := range 3 {
		recs = append(recs, store.AuditRecord{ID: fmt.Sprintf("new000000%d", i), Subjects: []string{sub, "user:h:0123456789abcdef"},
			Data: fmt.Appendf(nil, `{"v":1,"id":"new000000%d"}`, i), Keep: 10, TTL: time.Hour})
	}
	if err := s.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	ids, err := admin.LRange(ctx, key, 0, -1).Result()
	if want := []string{legacy, "new0000000", "new0000001", "new0000002"}; err != nil || fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("trail list = %q, %v; want %q (ids, not records)", ids, err, want)
	}
	if err := admin.Del(ctx, "mailguard:{mailguard}:ai:new0000001").Err(); err != nil { // as if expired
		t.Fatal(err)
	}
	got, err := s.Trail(ctx, sub)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{legacy, `{"v":1,"id":"new0000000"}`, `{"v":1,"id":"new0000002"}`}
	if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Errorf("Trail = %q, want %q", got, want)
	}
}
