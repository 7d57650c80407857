package store

import (
	"context"
	"time"
)

// Auditing is an optional ability of a Store, found by type assertion (both
// backends have it, and store/storetest holds them to it): the audit trail,
// a short list of recent decisions (failures, refusals, bans, unbans) per
// subject, and each decision by its id, so that every node can explain what
// any node decided. Records are opaque bytes to the store (package audit
// encodes them). Kept apart from Store so that a Store without it still
// works, without a trail.
//
// Boundaries: a subject's trail keeps its last Keep records; the trail and
// an id expire TTL after the latest record that named them.
type Auditing interface {
	// Append adds records, in order; one call is one round trip.
	Append(ctx context.Context, recs []AuditRecord) error
	// Trail returns the records of subject, oldest first (none: an empty
	// slice and no error).
	Trail(ctx context.Context, subject Subject) ([][]byte, error)
	// Record returns the record with id, or nil when none is kept.
	Record(ctx context.Context, id string) ([]byte, error)
}

// AuditRecord is one decision to keep.
type AuditRecord struct {
	ID       string    // short, unique; names the record in Auditing.Record
	Subjects []Subject // the trails it joins
	Data     []byte
	// Keep is how many records each of Subjects keeps (≥ 1); TTL how long
	// the record, its id and the trails it joins are kept (> 0).
	Keep int
	TTL  time.Duration
}
