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
	wg   sync.WaitGroup  // the drainers
	// kick hands a pipeline turn over to one of the n drainers, goroutines
	// kept for the store's life: starting one per hand-over cost a
	// goroutine and the growth of its stack to go-redis's depth each time.
	kick chan struct{}

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

// call is one store call in a pipeline: a whole command (EVALSHA sha
// numkeys keys... args..., or SET) with its reply. Calls are pooled, with
// the space their arguments are built in (see the builders below), so that
// a request costs go-redis's reply and a few strings, not an allocation per
// argument: go-redis writes a *string or *int64 argument as the value it
// points to, and a pointer stored in an interface needs no allocation.
type call struct {
	script *script // nil: not a script of ours (SET, or other below)
	// other is a script called through batcher.script, with its keys and
	// arguments as given, for EVAL after a NOSCRIPT.
	other     *redis.Script
	otherKeys []string
	otherArgs []any
	args      []any // the command; pointers into strs and ints
	strs      []string
	ints      []int64
	keyBuf    []byte // the keys' bytes, made one string by keys
	keyEnd    []int

	ctx      context.Context
	queued   time.Time
	cmd      *redis.Cmd
	err      error         // set before done is signalled
	done     chan struct{} // one value when the call is complete
	complete bool          // its caller received done: it may be reused
}

var calls = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

// newCall returns an empty call from the pool.
func newCall() *call {
	c := calls.Get().(*call)
	c.args, c.strs, c.ints = c.args[:0], c.strs[:0], c.ints[:0]
	c.keyBuf, c.keyEnd = c.keyBuf[:0], c.keyEnd[:0]
	return c
}

// release returns c to the pool once its caller is done with the reply,
// unless it was abandoned (its caller gave up waiting): a pipeline may
// still hold it.
func (c *call) release() {
	if !c.complete || cap(c.args) > 256 || cap(c.keyBuf) > 4096 {
		return // an unusually large one: let it go
	}
	clear(c.args[:cap(c.args)]) // no stale pointers kept alive by the pool
	clear(c.strs[:cap(c.strs)])
	c.script, c.ctx, c.cmd, c.err, c.complete = nil, nil, nil, nil, false
	calls.Put(c)
}

// str appends a string argument.
func (c *call) str(v string) {
	c.strs = append(c.strs, v)
	// A pointer into strs stays valid when a later append moves strs: the
	// element it points to keeps its value in the old array.
	c.args = append(c.args, &c.strs[len(c.strs)-1])
}

// int appends an integer argument.
func (c *call) int(v int64) {
	c.ints = append(c.ints, v)
	c.args = append(c.args, &c.ints[len(c.ints)-1])
}

// key ends a key whose bytes were appended to keyBuf.
func (c *call) key() { c.keyEnd = append(c.keyEnd, len(c.keyBuf)) }

// eval starts the command as EVALSHA of s with the keys ended so far, made
// one string (one allocation for all of them). The script's arguments
// follow with str and int.
func (c *call) eval(s *script) {
	c.script = s
	c.args = append(c.args, "evalsha", s.Hash(), len(c.keyEnd))
	c.keys()
}

func (c *call) keys() {
	all := string(c.keyBuf)
	start := 0
	for _, end := range c.keyEnd {
		c.str(all[start:end])
		start = end
	}
}

// script is a Lua script with its source, for EVAL after a NOSCRIPT.
type script struct {
	*redis.Script
	src string
}

func newScript(src string) *script { return &script{redis.NewScript(src), src} }

func newBatcher(c redis.UniversalClient, done <-chan struct{}, wait time.Duration) *batcher {
	b := &batcher{c: c, done: done, wait: wait, n: pipelines, kick: make(chan struct{}, pipelines)}
	for range b.n {
		b.wg.Go(b.drainer)
	}
	return b
}

// drainer drains the queue each time a sender hands its turn over, until
// the store closes.
func (b *batcher) drainer() {
	for {
		select {
		case <-b.kick:
			b.drain()
		case <-b.done:
			return
		}
	}
}

// script runs s with keys and args as one call of a pipeline and returns
// its reply: the general form, for calls off the request path (each
// argument is boxed as given, and the call is not pooled).
func (b *batcher) script(ctx context.Context, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	c := &call{other: s, otherKeys: keys, otherArgs: args, done: make(chan struct{}, 1)}
	c.args = make([]any, 0, 3+len(keys)+len(args))
	c.args = append(c.args, "evalsha", s.Hash(), len(keys))
	for _, k := range keys {
		c.args = append(c.args, k)
	}
	c.args = append(c.args, args...)
	if err := b.do(ctx, c); err != nil {
		cmd := redis.NewCmd(ctx)
		cmd.SetErr(err)
		return cmd
	}
	return c.cmd
}

// run sends c as one call of a pipeline and returns its reply; the caller
// reads it, then releases c.
func (b *batcher) run(ctx context.Context, c *call) (*redis.Cmd, error) {
	if err := b.do(ctx, c); err != nil {
		return nil, err
	}
	return c.cmd, c.cmd.Err()
}

// do sends c at once when fewer than n pipelines are in flight, with
// whatever is queued; otherwise it queues c and waits until a pipeline
// answers it, ctx ends or the store closes. An abandoned call may still be
// sent; its reply is dropped.
func (b *batcher) do(ctx context.Context, c *call) error {
	c.ctx, c.queued = ctx, time.Now()
	b.mu.Lock()
	if b.active < b.n {
		b.active++
		b.mu.Unlock()
		b.send(c)
		<-c.done // complete: send finished it
		c.complete = true
		return c.err
	}
	b.queue = append(b.queue, c)
	b.mu.Unlock()
	select {
	case <-c.done:
		c.complete = true
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	case <-b.done:
		return store.ErrClosed
	}
}

// send sends own and the queued calls as one pipeline, then, if calls were
// queued meanwhile, hands the sending over to a drainer so that own's
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
	b.kick <- struct{}{} // buffered for every turn: never blocks
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
		default:
			c.cmd = redis.NewCmd(ctx, c.args...)
			p.Process(ctx, c.cmd) // queued: errors come with Exec
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
		if err := c.cmd.Err(); err != nil && (c.script != nil || c.other != nil) && redis.HasErrorPrefix(err, "NOSCRIPT") {
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
		if c.other != nil {
			c.cmd = c.other.Eval(ctx, p, c.otherKeys, c.otherArgs...)
			continue
		}
		c.args[0], c.args[1] = "eval", c.script.src // EVAL also loads the script
		c.cmd = redis.NewCmd(ctx, c.args...)
		p.Process(ctx, c.cmd)
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
	c.done <- struct{}{} // buffered: never blocks, even for an abandoned call
}
