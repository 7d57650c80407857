package memstore

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/mailguard/mailguard/store"
)

var _ store.Holding = (*Store)(nil)

// holding is the embedded store's store.Holding state. It is not persisted:
// after a restart the held bans are gone, and their subjects are held
// again at their next failure (their windows are gone too; see the package
// doc).
type holding struct {
	mu     sync.Mutex
	window []int64             // admitted and released bans, unix ns, oldest first, ≤ limit+1
	held   []store.Held        // oldest first
	index  map[string]struct{} // holdKey of every held ban
	next   time.Time           // the earliest expiry of held (zero: none held)
}

func holdKey(jail, subject string) string { return jail + "\x00" + subject }

// count drops the window's entries older than span and returns the rest.
func (h *holding) count(now int64, span time.Duration) int {
	i := 0
	for i < len(h.window) && now-h.window[i] >= int64(span) {
		i++
	}
	h.window = h.window[i:]
	return len(h.window)
}

func (h *holding) add(now int64, limit int) {
	h.window = append(h.window, now)
	if n := len(h.window) - (limit + 1); n > 0 {
		h.window = slices.Clone(h.window[n:])
	}
}

// take removes the held bans keep says no to, returning them in order.
func (h *holding) take(keep func(store.Held) bool) []store.Held {
	var out []store.Held
	rest := h.held[:0]
	for _, e := range h.held {
		if keep(e) {
			rest = append(rest, e)
		} else {
			out = append(out, e)
		}
	}
	clear(h.held[len(rest):])
	h.held = rest
	h.reindex()
	return out
}

func (h *holding) reindex() {
	if h.index == nil {
		h.index = make(map[string]struct{})
	}
	clear(h.index)
	h.next = time.Time{}
	for _, e := range h.held {
		h.index[holdKey(e.Jail, e.Subject)] = struct{}{}
		h.noteExpiry(e)
	}
}

func (h *holding) noteExpiry(e store.Held) {
	if x := e.Expires(); h.next.IsZero() || x.Before(h.next) {
		h.next = x
	}
}

func checkHold(op string, limit int, span time.Duration) error {
	if limit < 1 || span <= 0 {
		return fmt.Errorf("memstore: %s: limit %d and span %v must be positive", op, limit, span)
	}
	return nil
}

// Admit counts a ban and holds it past the limit (store.Holding).
func (s *Store) Admit(_ context.Context, e store.Held, limit int, span time.Duration) (bool, error) {
	if s.closed.Load() {
		return false, store.ErrClosed
	}
	if err := checkHold("admit", limit, span); err != nil {
		return false, err
	}
	if e.BanTime <= 0 {
		return false, fmt.Errorf("memstore: admit: bantime %v must be positive", e.BanTime)
	}
	now := s.now()
	h := &s.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropExpired(now)
	k := holdKey(e.Jail, e.Subject)
	if h.index == nil {
		h.index = make(map[string]struct{})
	}
	if _, ok := h.index[k]; ok {
		return false, nil
	}
	n := h.count(nanos(now), span)
	if len(h.held) == 0 && n < limit {
		h.add(nanos(now), limit)
		return true, nil
	}
	if len(h.held) >= store.MaxHeld {
		return false, store.ErrHoldFull
	}
	h.add(nanos(now), limit)
	e.Held = now
	h.held = append(h.held, e)
	h.index[k] = struct{}{}
	h.noteExpiry(e)
	return false, nil
}

// dropExpired drops the held bans that ran out; it returns how many.
func (h *holding) dropExpired(now time.Time) int {
	if len(h.held) == 0 || now.Before(h.next) {
		return 0
	}
	return len(h.take(func(e store.Held) bool { return e.Expires().After(now) }))
}

// Drain releases held bans while the window has room (store.Holding).
func (s *Store) Drain(_ context.Context, limit int, span time.Duration) ([]store.Held, int, error) {
	if s.closed.Load() {
		return nil, 0, store.ErrClosed
	}
	if err := checkHold("drain", limit, span); err != nil {
		return nil, 0, err
	}
	now := s.now()
	h := &s.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	expired := h.dropExpired(now)
	room := limit - h.count(nanos(now), span)
	if room <= 0 || len(h.held) == 0 {
		return nil, expired, nil
	}
	room = min(room, len(h.held))
	out := slices.Clone(h.held[:room])
	for range out {
		h.add(nanos(now), limit)
	}
	h.held = slices.Clone(h.held[room:])
	h.reindex()
	return out, expired, nil
}

// Confirm releases the held bans of subject, or all (store.Holding).
func (s *Store) Confirm(_ context.Context, subject store.Subject) ([]store.Held, int, error) {
	if s.closed.Load() {
		return nil, 0, store.ErrClosed
	}
	now := s.now()
	h := &s.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	expired := 0
	out := h.take(func(e store.Held) bool {
		if subject != "" && e.Subject != subject {
			return true
		}
		if !e.Expires().After(now) {
			expired++
		}
		return false
	})
	out = slices.DeleteFunc(out, func(e store.Held) bool { return !e.Expires().After(now) })
	return out, expired, nil
}

// Held lists the held bans (store.Holding).
func (s *Store) Held(_ context.Context) ([]store.Held, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	h := &s.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropExpired(s.now())
	return slices.Clone(h.held), nil
}

// Rate counts the window's bans within span (store.Holding).
func (s *Store) Rate(_ context.Context, span time.Duration) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	now := nanos(s.now())
	h := &s.hold
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, t := range h.window {
		if now-t < int64(span) {
			n++
		}
	}
	return n, nil
}
