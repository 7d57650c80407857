package memstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mailguard/mailguard/store"
)

var _ store.Sharing = (*Store)(nil)

// maxShareSubjects bounds the subjects the embedded store tracks for
// store.Sharing: each successful login names one, and an entry costs about
// 100 bytes plus ~40 per member.
const maxShareSubjects = 100_000

// sharing is the embedded store's store.Sharing state. It is not persisted:
// after a restart shared addresses are learnt again from the next logins.
type sharing struct {
	mu   sync.Mutex
	subj map[string]map[string]int64 // subject → member → last seen, unix ns
}

// prune drops the members of m not seen within span of now and, above
// limit, the least recently seen ones. It returns how many are left.
func prune(m map[string]int64, now int64, span time.Duration, limit int) int {
	for k, t := range m {
		if now-t >= int64(span) {
			delete(m, k)
		}
	}
	for limit > 0 && len(m) > limit {
		oldest, ot := "", int64(0)
		for k, t := range m {
			if oldest == "" || t < ot {
				oldest, ot = k, t
			}
		}
		delete(m, oldest)
	}
	return len(m)
}

// Share records member at subject (store.Sharing).
func (s *Store) Share(_ context.Context, subject, member string, span time.Duration, limit int) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	if span <= 0 || limit < 1 {
		return 0, fmt.Errorf("memstore: share: span %v and limit %d must be positive", span, limit)
	}
	now := nanos(s.now())
	sh := &s.share
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.subj == nil {
		sh.subj = make(map[string]map[string]int64)
	}
	m := sh.subj[subject]
	if m == nil {
		if len(sh.subj) >= maxShareSubjects {
			sh.evict(now, span)
		}
		m = make(map[string]int64, limit)
		sh.subj[subject] = m
	}
	m[member] = now
	return prune(m, now, span, limit), nil
}

// evict makes room for one subject: one whose members all aged out if a
// short scan finds one, else any.
func (sh *sharing) evict(now int64, span time.Duration) {
	n, victim := 0, ""
	for k, m := range sh.subj {
		if victim == "" {
			victim = k
		}
		if prune(m, now, span, 0) == 0 {
			victim = k
			break
		}
		if n++; n == 64 {
			break
		}
	}
	delete(sh.subj, victim)
}

// Sharers counts the members of subject within span (store.Sharing).
func (s *Store) Sharers(_ context.Context, subject string, span time.Duration) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	now := nanos(s.now())
	sh := &s.share
	sh.mu.Lock()
	defer sh.mu.Unlock()
	n := 0
	for _, t := range sh.subj[subject] {
		if now-t < int64(span) {
			n++
		}
	}
	return n, nil
}

// Shared lists the subjects with at least limit members within span
// (store.Sharing).
func (s *Store) Shared(_ context.Context, span time.Duration, limit int) (map[store.Subject]int, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	now := nanos(s.now())
	sh := &s.share
	sh.mu.Lock()
	defer sh.mu.Unlock()
	out := map[store.Subject]int{}
	for k, m := range sh.subj {
		n := prune(m, now, span, 0)
		if n == 0 {
			delete(sh.subj, k)
			continue
		}
		if n >= limit {
			out[k] = n
		}
	}
	return out, nil
}
