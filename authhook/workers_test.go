package authhook

import (
	"context"
	"sync"
	"testing"
)

// TestWorkersReused checks that calls one after another reuse one worker,
// that concurrent calls get one each (at most max kept idle), and that
// every worker ends once the context is done, running every job given.
func TestWorkersReused(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ws := &workers{ctx: ctx, max: 4}
	idle := func() int {
		ws.mu.Lock()
		defer ws.mu.Unlock()
		return len(ws.idle)
	}
	var ran sync.WaitGroup
	for range 100 {
		done := make(chan struct{})
		ran.Add(1)
		ws.run(func() { defer ran.Done(); close(done) })
		<-done
		for idle() != 1 { // the worker puts itself back right after its job
		}
	}
	if got := idle(); got != 1 {
		t.Errorf("after 100 calls one after another: %d idle workers, want 1", got)
	}

	release := make(chan struct{})
	var started sync.WaitGroup
	for range 8 {
		started.Add(1)
		ran.Add(1)
		ws.run(func() { defer ran.Done(); started.Done(); <-release })
	}
	started.Wait() // 8 jobs at once: 8 workers
	close(release)
	ran.Wait()
	for idle() < 4 {
	}
	if got := idle(); got != 4 {
		t.Errorf("after 8 concurrent calls: %d idle workers, want max 4", got)
	}

	cancel()
	ws.wait() // every worker ends
	if got := idle(); got != 0 {
		t.Errorf("after the context ended: %d idle workers, want 0", got)
	}
}
