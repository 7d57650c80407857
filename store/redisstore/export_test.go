package redisstore

import (
	"context"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Client returns the store's go-redis client, for tests that count commands.
func (s *Store) Client() redis.UniversalClient { return s.c }

// OpenHeld opens a store that sends one pipeline at a time, and whose
// first pipeline waits, once its first call is in, until release is called:
// held reports that wait, queued the calls queued meanwhile, which join that
// pipeline. sizes receives the size of every pipeline sent.
func OpenHeld(ctx context.Context, o Options) (s *Store, held func() bool, queued func() int, release func(), sizes <-chan int, err error) {
	gate := make(chan struct{})
	ch := make(chan int, 64)
	s, err = open(ctx, o, func(b *batcher) {
		b.n, b.gate = 1, gate
		b.onBatch = func(n int) { ch <- n }
	})
	if err != nil {
		return nil, nil, nil, nil, nil, err
	}
	var once sync.Once
	return s, s.b.held.Load, func() int {
			s.b.mu.Lock()
			defer s.b.mu.Unlock()
			return len(s.b.queue)
		}, func() { once.Do(func() { close(gate) }) },
		ch, nil
}

// WindowKey is the Redis key holding subject's failure window in jail.
func WindowKey(prefix, jail, subject string) string {
	k, err := newKeys(prefix)
	if err != nil {
		panic(err)
	}
	return k.window(jail, subject)
}

// WithWatchReady returns ctx for Watch, which calls ready once it has found
// the end of the stream: every ban made after ready returns is delivered.
func WithWatchReady(ctx context.Context, ready func()) context.Context {
	return context.WithValue(ctx, watchReadyKey{}, ready)
}
