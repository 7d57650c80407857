package memstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// TestAuditTTL: a trail and an id live TTL after their latest record.
func TestAuditTTL(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s, err := Open(Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	rec := func(id string) []store.AuditRecord {
		return []store.AuditRecord{{ID: id, Subjects: []string{"net:192.0.2.7/32"}, Data: []byte(id), Keep: 4, TTL: time.Hour}}
	}
	if err := s.Append(ctx, rec("a")); err != nil {
		t.Fatal(err)
	}
	now = now.Add(30 * time.Minute)
	if err := s.Append(ctx, rec("b")); err != nil {
		t.Fatal(err)
	}
	now = now.Add(30 * time.Minute) // a's age: TTL; the trail's: TTL/2
	if got, _ := s.Record(ctx, "a"); got != nil {
		t.Errorf("Record(a) at age TTL = %q, want nil", got)
	}
	if got, _ := s.Trail(ctx, "net:192.0.2.7/32"); len(got) != 2 {
		t.Errorf("Trail at TTL/2 after b = %q, want a and b", got)
	}
	now = now.Add(30 * time.Minute)
	if got, _ := s.Trail(ctx, "net:192.0.2.7/32"); len(got) != 0 {
		t.Errorf("Trail at TTL after b = %q, want none", got)
	}
}

// TestAuditFlood: a flood of distinct subjects never holds more than
// maxAuditEvents records or ids, and the newest trail is whole.
func TestAuditFlood(t *testing.T) {
	s, err := Open(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	const perSubject = 3
	n := maxAuditEvents/perSubject + 5000
	for i := range n {
		sub := fmt.Sprintf("net:10.%d.%d.%d/32", i>>16&255, i>>8&255, i&255)
		recs := make([]store.AuditRecord, perSubject)
		for j := range recs {
			recs[j] = store.AuditRecord{ID: fmt.Sprintf("%d.%d", i, j), Subjects: []string{sub}, Data: []byte("x"), Keep: 10, TTL: time.Hour}
		}
		if err := s.Append(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	a := &s.audit
	a.mu.Lock()
	events, ids, held := a.events, len(a.ids), 0
	for _, tr := range a.trails {
		held += len(tr.recs)
	}
	a.mu.Unlock()
	if events > maxAuditEvents || ids > maxAuditEvents || held != events {
		t.Errorf("after %d subjects: %d events (counted %d), %d ids; want at most %d, counted right", n, held, events, ids, maxAuditEvents)
	}
	last := fmt.Sprintf("net:10.%d.%d.%d/32", (n-1)>>16&255, (n-1)>>8&255, (n-1)&255)
	if got, _ := s.Trail(ctx, last); len(got) != perSubject {
		t.Errorf("newest trail has %d records, want %d", len(got), perSubject)
	}
}
