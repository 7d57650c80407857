package redisstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
)

// Auto-pipelining. The calls of the request path (Check, Hit, Remember,
// Reset) do not take a pooled connection each: while pipelines are in
// flight they queue, and the queued calls are sent together as one go-redis
// pipeline, so that Redis and the daemon pay one read and one write syscall
// per batch instead of per request.
//
//   - An idle store sends a call at once, from the caller's own goroutine:
//     no hand-off, no timer, so a quiet node's latency does not grow.
//   - A call that arrives while `pipelines` pipelines are in flight queues.
//     When a pipeline returns, its sender (the caller that sent it, or the
//     goroutine it handed over to) takes everything queued, at most
//     maxBatch calls, as the next pipeline: a queued call waits for one
//     round trip at most, and its caller is answered from that pipeline.
//   - Each call stays one EVALSHA (or SET) with its own reply and error: a
//     script error (WRONGTYPE, a failed script) fails that call only; a
//     connection error fails the calls of that pipeline only, which answer
//     per store.fail_mode like any failed call. A NOSCRIPT reply (Redis
//     restarted or SCRIPT FLUSH) means the script did not run: those calls
//     are sent again as EVAL, which also reloads the script, in one more
//     pipeline.
//   - Nothing is retried after it may have run: a Hit counts once.
//   - A call that waited in the queue longer than the pool timeout (Redis
//     stalled) fails without being sent, as a call that could not get a
//     pooled connection did before: with Redis away every call fails within
//     about 2 × ReadTimeout.
//   - Redis Cluster: go-redis's ClusterClient splits a pipeline per node by
//     slot; every key of a store shares one hash tag, so each pipeline goes
//     to the one master holding the store, as single calls did.
//
// go-redis v9 also has an AutoPipeline of its own; it is marked experimental
// and may replay a command Redis already ran after a connection failure,
// which could count a Hit twice, so it is not used.
const (
	// pipelines is the number of pipelines in flight at once: one being
	// sent or read while another runs in Redis.
	pipelines = 2
	// maxBatch bounds one pipeline (at ~15 µs of Redis CPU per script, a full
	// batch is ~2 ms of Redis time).
	maxBatch = 128
)

// errQueueTimeout fails a call that waited for a pipeline longer than the
// pool timeout: the pipelines in flight are stuck on a stalled Redis.
var errQueueTimeout = errors.New("waited longer than the pool timeout for a pipeline")

// batcher owns the queue of calls and the pipelines in flight.
type batcher struct {
	c    redis.UniversalClient
	done <-chan struct{} // the store's: closed by Close
	wait time.Duration   // the longest a call may wait in the queue
	n    int             // pipelines in flight at most
	wg   sync.WaitGroup  // the goroutines senders hand over to

	mu     sync.Mutex
	queue  []*call
	active int // pipelines being sent

	// Test seams (export_test.go); nil in production. gate, when set, is
	// received from by a sender before it takes the queued calls (held is
	// set while it waits); onBatch is told the size of every pipeline sent.
	gate    chan struct{}
	held    atomic.Bool
	onBatch func(n int)
}

// call is one store call in a pipeline: a script with its keys and args, or
// (script nil) a SET of key to args[0] with expiry ttl.
type call struct {
	script *redis.Script
	keys   []string
	args   []any
	ttl    time.Duration

	ctx    context.Context
	queued time.Time
	cmd    redis.Cmder
	err    error // set before done is closed
	done   chan struct{}
}

func newBatcher(c redis.UniversalClient, done <-chan struct{}, wait time.Duration) *batcher {
	return &batcher{c: c, done: done, wait: wait, n: pipelines}
}

// script runs s as one call of a pipeline and returns its reply.
func (b *batcher) script(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	c := &call{script: s, keys: keys, args: args}
	if err := b.do(ctx, c); err != nil {
		cmd := redis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	return c.cmd.(*redis.Cmd)
}

// set runs SET key value PX ttl as one call of a pipeline.
func (b *batcher) set(ctx context.Context, key string, value any, ttl time.Duration) error {
	c := &call{keys: []string{key}, args: []any{value}, ttl: ttl}
	if err := b.do(ctx, c); err != nil {
		return err
	}
	return c.cmd.Err()
}

// do sends c at once when fewer than n pipelines are in flight, with
// whatever is queued; otherwise it queues c and waits until a pipeline
// answers it, ctx ends or the store closes. An abandoned call may still be
// sent; its reply is dropped.
func (b *batcher) do(ctx context.Context, c *call) error {
	c.ctx, c.queued, c.done = ctx, time.Now(), make(chan struct{})
	b.mu.Lock()
	if b.active < b.n {
		b.active++
		b.mu.Unlock()
		b.send(c)
		return c.err
	}
	b.queue = append(b.queue, c)
	b.mu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	case <-b.done:
		return store.ErrClosed
	}
}

// send sends own and the queued calls as one pipeline, then, if calls were
// queued meanwhile, hands the sending over to a goroutine so that own's
// caller is answered now. It holds one of the n pipeline turns.
func (b *batcher) send(own *call) {
	if b.gate != nil {
		b.held.Store(true)
		<-b.gate
	}
	b.mu.Lock()
	batch := b.take(own)
	b.mu.Unlock()
	b.exec(batch)
	b.mu.Lock()
	if len(b.queue) == 0 {
		b.active--
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	b.wg.Go(b.drain)
}

// drain sends the queued calls, a pipeline at a time, until none is left.
// It holds one of the n pipeline turns.
func (b *batcher) drain() {
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.active--
			b.mu.Unlock()
			return
		}
		batch := b.take(nil)
		b.mu.Unlock()
		select {
		case <-b.done:
			for _, c := range batch {
				c.finish(store.ErrClosed)
			}
			continue
		default:
		}
		b.exec(batch)
	}
}

// take returns own (if not nil) and up to maxBatch queued calls, removing
// them from the queue. b.mu must be held.
func (b *batcher) take(own *call) []*call {
	n := min(len(b.queue), maxBatch)
	batch := make([]*call, 0, n+1)
	if own != nil {
		batch = append(batch, own)
	}
	batch = append(batch, b.queue[:n]...)
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	return batch
}

// exec sends the live calls of batch as one pipeline and completes every
// call of it.
func (b *batcher) exec(batch []*call) {
	// The pipeline's I/O is bounded by the client's read and write
	// timeouts, not by any one caller's context: a caller that gives up
	// must not fail the others.
	ctx := context.Background()
	now := time.Now()
	p := b.c.Pipeline()
	sent := make([]*call, 0, len(batch))
	for _, c := range batch {
		switch {
		case c.ctx.Err() != nil:
			c.finish(c.ctx.Err())
		case now.Sub(c.queued) > b.wait:
			c.finish(errQueueTimeout)
		case c.script == nil:
			c.cmd = p.Set(ctx, c.keys[0], c.args[0], c.ttl)
			sent = append(sent, c)
		default:
			c.cmd = p.EvalSha(ctx, c.script.Hash(), c.keys, c.args...)
			sent = append(sent, c)
		}
	}
	if len(sent) == 0 {
		return
	}
	if b.onBatch != nil {
		b.onBatch(len(sent))
	}
	p.Exec(ctx) // errors are each command's own
	var again []*call
	for _, c := range sent {
		if c.script != nil && redis.HasErrorPrefix(c.cmd.Err(), "NOSCRIPT") {
			again = append(again, c)
			continue
		}
		c.finish(nil)
	}
	if len(again) == 0 {
		return
	}
	p = b.c.Pipeline()
	for _, c := range again {
		c.cmd = c.script.Eval(ctx, p, c.keys, c.args...)
	}
	if b.onBatch != nil {
		b.onBatch(len(again))
	}
	p.Exec(ctx)
	for _, c := range again {
		c.finish(nil)
	}
}

func (c *call) finish(err error) {
	c.err = err
	close(c.done)
}
