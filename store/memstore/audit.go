package memstore

import (
	"context"
	"fmt"
	"sync"

	"github.com/mailguard/mailguard/store"
)

var _ store.Auditing = (*Store)(nil)

// Bounds of the embedded audit trail under a flood, beyond the per-subject
// Keep and the TTL: at most maxAuditEvents records in all the trails and as
// many ids. A record of a failure costs about 400 bytes with its id
// (TestMemoryPerAuditedSubject): about 80 MB at the bound.
const (
	maxAuditEvents  = 200_000
	auditSweepEvery = 4096 // appends between sweeps of expired entries
)

// auditing is the embedded store's store.Auditing state. It is not
// persisted: after a restart the trail starts afresh (audit.file keeps
// the history on disk).
type auditing struct {
	mu      sync.Mutex
	trails  map[string]*auditTrail
	ids     map[string]auditEntry
	events  int // records in trails
	appends int
}

// auditTrail holds a subject's records, oldest first: the last keep of
// them count; up to keep more wait to be trimmed, so that an append costs
// O(1) amortised, not a copy of the trail.
type auditTrail struct {
	recs    [][]byte
	keep    int
	expires int64 // unix ns
}

// live is the records that count.
func (t *auditTrail) live() [][]byte {
	if n := len(t.recs) - t.keep; n > 0 {
		return t.recs[n:]
	}
	return t.recs
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
		if _, ok := a.ids[r.ID]; !ok && len(a.ids) >= maxAuditEvents {
			for k := range a.ids { // any one: maps iterate in random order
				delete(a.ids, k)
				break
			}
		}
		a.ids[r.ID] = auditEntry{data: data, expires: exp}
		for _, sub := range r.Subjects {
			t := a.trails[sub]
			if t != nil && t.expires <= now {
				a.events -= len(t.recs)
				t.recs = nil
			}
			if a.events >= maxAuditEvents { // expired ones go at the next sweep
				for k, v := range a.trails { // random victims: maps iterate in random order
					if a.events < maxAuditEvents {
						break
					}
					if v == t {
						continue
					}
					a.events -= len(v.recs)
					delete(a.trails, k)
				}
			}
			if t == nil {
				t = &auditTrail{}
				a.trails[sub] = t
			}
			t.recs = append(t.recs, data)
			a.events++
			t.keep = r.Keep
			if n := len(t.recs) - r.Keep; n >= r.Keep || n > 0 && cap(t.recs) == len(t.recs) {
				t.recs = append(make([][]byte, 0, 2*r.Keep), t.recs[n:]...)
				a.events -= n
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
			a.events -= len(t.recs)
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
	live := t.live()
	out := make([][]byte, len(live))
	for i, r := range live {
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
