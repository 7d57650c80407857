package memstore

import (
	"context"
	"log/slog"
	"sync"

	"github.com/mailguard/mailguard/store"
)

// maxQueued bounds the events waiting for one slow watcher. Past it events
// are dropped with a warning: watchers (the firewall) reconcile with Bans
// periodically, so a dropped event delays a firewall change, it does not
// lose it. Ban changes never wait for watchers.
const maxQueued = 1 << 16

// hub fans events out to the watchers.
type hub struct {
	mu   sync.Mutex
	subs map[*sub]struct{}
	log  *slog.Logger
}

type sub struct {
	mu      sync.Mutex
	queue   []store.Event
	dropped int
	wake    chan struct{} // cap 1: "the queue is not empty"
}

func (h *hub) add() *sub {
	s := &sub{wake: make(chan struct{}, 1)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = make(map[*sub]struct{})
	}
	h.subs[s] = struct{}{}
	return s
}

func (h *hub) remove(s *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
}

// emit queues ev for every watcher. Callers hold the lock of the shard the
// event is about, so the events of one subject are queued in order.
func (h *hub) emit(kind store.EventKind, b store.Ban) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		s.mu.Lock()
		if len(s.queue) >= maxQueued {
			if s.dropped == 0 {
				h.log.Warn("memstore: a watcher is too slow, dropping events until it catches up", "queued", len(s.queue))
			}
			s.dropped++
			s.mu.Unlock()
			continue
		}
		s.queue = append(s.queue, store.Event{Kind: kind, Ban: b})
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *sub) take() []store.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue
	s.queue, s.dropped = nil, 0
	return q
}

// Watch calls fn for every ban and unban made through this store from now
// on, in order, from the calling goroutine, until ctx ends (it returns
// ctx.Err()) or the store is closed (ErrClosed). The process is the only
// node of an embedded store, so these are its own changes. Bans that expire
// make no event.
func (s *Store) Watch(ctx context.Context, fn func(store.Event)) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	sb := s.hub.add()
	defer s.hub.remove(sb)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return store.ErrClosed
		case <-sb.wake:
			for _, ev := range sb.take() {
				fn(ev)
			}
		}
	}
}
