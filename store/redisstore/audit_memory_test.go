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
