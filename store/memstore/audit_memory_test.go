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

// auditRecord is an audit event as package audit encodes a failure (a
// realistic size: 240 bytes).
func auditRecord(i, j int) []byte {
	return fmt.Appendf(nil, `{"v":1,"id":"%05dx%04d","time":"2026-11-29T08:00:20.123456789Z","node":"mx1","kind":"failure","source":"dovecot","event":"auth-failure","protocol":"imap","addr":"10.%d.%d.%d","user":"h:3f2a9c0d1e4b5a67","jails":["dovecot","dovecot-user"],"count":%d}`,
		i%100000, j, i>>16&255, i>>8&255, i&255, j+1)
}

// TestMemoryPerAuditedSubject measures the live heap per audited subject:
// 20,000 attacking addresses with a full trail (10 events, the default
// maxretry 5 × 2), each event also kept by its id. It logs the figure and
// fails only well above README's.
func TestMemoryPerAuditedSubject(t *testing.T) {
	testenv.Long(t, "200,000 audit records")
	const n, keep = 20_000, 10
	s, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	before := liveHeap()
	for i := range n {
		sub := fmt.Sprintf("net:10.%d.%d.%d/32", i>>16&255, i>>8&255, i&255)
		recs := make([]store.AuditRecord, keep)
		for j := range keep {
			recs[j] = store.AuditRecord{ID: fmt.Sprintf("%05dx%04d", i, j), Subjects: []string{sub},
				Data: auditRecord(i, j), Keep: keep, TTL: time.Hour}
		}
		if err := s.Append(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	per := (liveHeap() - before) / n
	t.Logf("audit: %d bytes live per subject with %d events (%d per event)", per, keep, per/keep)
	if per > 6000 {
		t.Errorf("%d bytes per audited subject, want at most 6000", per)
	}
	runtime.KeepAlive(s)
}
