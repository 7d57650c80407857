package memstore

import (
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
