// Package deadline hands out request contexts whose deadline is shared by
// the requests that start within the same short slot of time.
//
// A front end bounds each request's guard calls by a timeout. A
// context.WithTimeout per request costs a context, a runtime timer and a
// registration in the parent's list of children (under the parent's lock,
// shared by every request): about a tenth of the CPU of a request on the
// embedded store. Requests that start within one slot (a fiftieth of the
// timeout, at least a millisecond) can share one context instead, whose
// deadline is the end of the slot plus the timeout: each request gets at
// least its timeout and at most one slot more.
package deadline

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Shared makes the shared contexts. It is safe for concurrent use.
type Shared struct {
	parent  context.Context
	timeout time.Duration
	slot    time.Duration

	mu  sync.Mutex // held while making a new slot's context
	cur atomic.Pointer[slot]
}

type slot struct {
	ctx    context.Context
	cancel context.CancelFunc // released by the deadline, or by the parent
	end    time.Time          // requests starting before end share ctx
}

// MinSlot is the shortest slot; Slot is the slot of a timeout.
const MinSlot = time.Millisecond

// Slot returns the slot used for timeout: timeout/50, at least MinSlot.
func Slot(timeout time.Duration) time.Duration { return max(timeout/50, MinSlot) }

// New returns contexts derived from parent (cancelled with it) that end at
// least timeout after the request started. timeout must be positive.
func New(parent context.Context, timeout time.Duration) *Shared {
	return &Shared{parent: parent, timeout: timeout, slot: Slot(timeout)}
}

// Context returns the context of a request started at now: done when the
// parent is, or between timeout and timeout plus one slot after now. Callers
// must not cancel it (they cannot: it is shared).
func (s *Shared) Context(now time.Time) context.Context {
	if c := s.cur.Load(); c != nil && now.Before(c.end) && !now.Before(c.end.Add(-s.slot)) {
		return c.ctx
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.cur.Load(); c != nil && now.Before(c.end) && !now.Before(c.end.Add(-s.slot)) {
		return c.ctx
	}
	end := now.Add(s.slot)
	ctx, cancel := context.WithDeadline(s.parent, end.Add(s.timeout))
	s.cur.Store(&slot{ctx: ctx, cancel: cancel, end: end})
	return ctx
}
