package logwatch

import (
	"context"
	"sync"
)

// runner is what every source (Follower, Journal) has in common: the one
// goroutine Start runs, stopped and joined by Stop, and the health it
// reports. The zero value is a source not started.
type runner struct {
	mu     sync.Mutex
	health error
	cancel context.CancelFunc
	done   chan struct{}
}

// started reports whether start was called.
func (r *runner) started() bool { return r.done != nil }

// start runs run in a goroutine until ctx ends or Stop is called.
func (r *runner) start(ctx context.Context, run func(context.Context)) {
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		run(ctx)
	}()
}

// Stop stops the source, which saves where it stopped (position or
// cursor), and waits for its goroutines. It may be called more than once,
// before Start, and after the Start context ended.
func (r *runner) Stop() {
	if r.done == nil {
		return
	}
	r.cancel()
	<-r.done
}

// Health is nil while the source is being read, or says why not (missing,
// unreadable, read errors, journalctl not running) for /healthz.
func (r *runner) Health() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.health
}

func (r *runner) setHealth(err error) {
	r.mu.Lock()
	r.health = err
	r.mu.Unlock()
}
