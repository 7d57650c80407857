package redisstore

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
)

// Watch calls fn for every ban and unban made through any Store sharing this
// Redis and prefix from now on, in stream order, until ctx ends (it returns
// ctx.Err()) or the Store is closed (store.ErrClosed). It follows the event
// stream with XREAD BLOCK from the last entry it saw; after an error it
// retries with backoff from the same position, so an outage shorter than the
// stream's length loses nothing (a longer one is what reconciling with Bans
// is for). fn runs on Watch's goroutine and should not block for long.
func (s *Store) Watch(ctx context.Context, fn func(store.Event)) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-s.done:
			cancel(store.ErrClosed)
		case <-ctx.Done():
		}
	}()
	stopped := func() error {
		if errors.Is(context.Cause(ctx), store.ErrClosed) {
			return store.ErrClosed
		}
		return ctx.Err()
	}

	backoff := newBackoff()
	last, err := s.tail(ctx)
	for err != nil {
		if ctx.Err() != nil {
			return stopped()
		}
		_ = s.fail("watch", err)
		if !backoff.wait(ctx) {
			return stopped()
		}
		last, err = s.tail(ctx)
	}
	backoff.reset()
	if ready, ok := ctx.Value(watchReadyKey{}).(func()); ok {
		ready()
	}
	for {
		// The deadline bounds a read from a stalled Redis; XREAD itself
		// answers (nil) after watchBlock.
		rctx, rcancel := context.WithTimeout(ctx, watchBlock+s.read+time.Second)
		res, err := s.c.XRead(rctx, &redis.XReadArgs{
			Streams: []string{s.k.events, last}, Count: 256, Block: watchBlock,
		}).Result()
		rcancel()
		if ctx.Err() != nil {
			return stopped()
		}
		if isNil(err) {
			continue
		}
		if err != nil {
			_ = s.fail("watch", err)
			if !backoff.wait(ctx) {
				return stopped()
			}
			continue
		}
		backoff.reset()
		for _, st := range res {
			for _, m := range st.Messages {
				last = m.ID
				ev, err := decodeEvent(m.Values)
				if err != nil {
					_ = s.fail("watch: event "+m.ID, err)
					continue
				}
				fn(ev)
			}
		}
	}
}

// watchReadyKey carries, in Watch's context, a function Watch calls once it
// knows where the stream ends: every event made after that is delivered.
// Tests wait for it instead of sleeping (export_test.go).
type watchReadyKey struct{}

// tail returns the id of the stream's last entry: Watch starts after it.
// "0-0" when there is no stream yet.
func (s *Store) tail(ctx context.Context) (string, error) {
	msgs, err := s.c.XRevRangeN(ctx, s.k.events, "+", "-", 1).Result()
	if err != nil {
		return "", err
	}
	if len(msgs) == 0 {
		return "0-0", nil
	}
	return msgs[0].ID, nil
}

func decodeEvent(v map[string]any) (store.Event, error) {
	str := func(k string) string { s, _ := v[k].(string); return s }
	var ev store.Event
	switch str("k") {
	case "ban":
		ev.Kind = store.Banned
	case "unban":
		ev.Kind = store.Unbanned
	default:
		return ev, errors.New("unknown kind")
	}
	b, err := decodeBan(str("j"), str("s"), str("r"))
	if err != nil {
		return ev, err
	}
	ev.Ban = b
	return ev, nil
}

// backoff waits between reconnection attempts: 100 ms doubling to 5 s.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) reset() { b.d = 100 * time.Millisecond }

// wait sleeps for the current delay and doubles it; false if ctx ended.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.d)
	defer t.Stop()
	b.d = min(2*b.d, 5*time.Second)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
