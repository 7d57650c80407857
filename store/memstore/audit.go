package memstore

import (
	"context"
	"fmt"
	"sync"

	"github.com/mailguard/mailguard/store"
)

var _ store.Auditing = (*Store)(nil)

// Bounds of the embedded audit trail under a flood, beyond the per-subject
// Keep and the TTL: a trail costs about 100 bytes plus its records, an id
// about 80 bytes plus its record (which it shares with the trails).
const (
	maxAuditSubjects = 200_000
	maxAuditIDs      = 1_000_000
	auditSweepEvery  = 4096 // appends between sweeps of expired entries
)

// auditing is the embedded store's store.Auditing state. It is not
// persisted: after a restart the trail starts afresh (audit.file keeps
// the history on disk).
type auditing struct {
	mu      sync.Mutex
	trails  map[string]*auditTrail
	ids     map[string]auditEntry
	appends int
}

type auditTrail struct {
	recs    [][]byte
	expires int64 // unix ns
}

type auditEntry struct {
	data    []byte
	expires int64
}

// Append adds records (store.Auditing).
func (s *Store) Append(_ context.Context, recs []store.AuditRecord) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	for _, r := range recs {
		if r.Keep < 1 || r.TTL <= 0 || r.ID == "" {
			return fmt.Errorf("memstore: append: id %q, keep %d and ttl %v must be set", r.ID, r.Keep, r.TTL)
		}
	}
	now := nanos(s.now())
	a := &s.audit
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.trails == nil {
		a.trails = make(map[string]*auditTrail)
		a.ids = make(map[string]auditEntry)
	}
	for _, r := range recs {
		exp := now + int64(r.TTL)
		data := append([]byte(nil), r.Data...)
		if _, ok := a.ids[r.ID]; !ok && len(a.ids) >= maxAuditIDs {
			a.sweep(now)
			if len(a.ids) >= maxAuditIDs {
				for k := range a.ids { // any one: maps iterate in random order
					delete(a.ids, k)
					break
				}
			}
		}
		a.ids[r.ID] = auditEntry{data: data, expires: exp}
		for _, sub := range r.Subjects {
			t := a.trails[sub]
			if t == nil || t.expires <= now {
				if t == nil && len(a.trails) >= maxAuditSubjects {
					a.sweep(now)
					if len(a.trails) >= maxAuditSubjects {
						for k := range a.trails {
							delete(a.trails, k)
							break
						}
					}
				}
				t = &auditTrail{}
				a.trails[sub] = t
			}
			t.recs = append(t.recs, data)
			if n := len(t.recs) - r.Keep; n > 0 {
				t.recs = append(t.recs[:0:0], t.recs[n:]...)
			}
			t.expires = max(t.expires, exp)
		}
	}
	if a.appends += len(recs); a.appends >= auditSweepEvery {
		a.appends = 0
		a.sweep(now)
	}
	return nil
}

// sweep drops expired trails and ids.
func (a *auditing) sweep(now int64) {
	for k, t := range a.trails {
		if t.expires <= now {
			delete(a.trails, k)
		}
	}
	for k, e := range a.ids {
		if e.expires <= now {
			delete(a.ids, k)
		}
	}
}

// Trail returns the records of subject, oldest first (store.Auditing).
func (s *Store) Trail(_ context.Context, subject store.Subject) ([][]byte, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	now := nanos(s.now())
	a := &s.audit
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.trails[subject]
	if t == nil || t.expires <= now {
		return [][]byte{}, nil
	}
	out := make([][]byte, len(t.recs))
	for i, r := range t.recs {
		out[i] = append([]byte(nil), r...)
	}
	return out, nil
}

// Record returns the record with id (store.Auditing).
func (s *Store) Record(_ context.Context, id string) ([]byte, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	now := nanos(s.now())
	a := &s.audit
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.ids[id]
	if !ok || e.expires <= now {
		return nil, nil
	}
	return append([]byte(nil), e.data...), nil
}
