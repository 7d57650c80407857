package authhook

import (
	"context"
	"slices"
	"sync"
)

// workers runs guard calls in goroutines that are kept for the next call
// once theirs returns, rather than a new goroutine per call: starting one
// and growing its stack to the depth of a store call cost more than the
// embedded store's work. There are at most about as many as calls in
// flight at once (MaxConcurrent), and they end once ctx is done and their
// call has returned; wait waits for that.
type workers struct {
	ctx  context.Context // the Server's: Close and Shutdown end it
	max  int             // idle workers kept at most
	wg   sync.WaitGroup
	mu   sync.Mutex
	idle []*worker
}

type worker struct{ jobs chan func() } // buffered: run never blocks

// run runs job in an idle worker, or a new one.
func (ws *workers) run(job func()) {
	ws.mu.Lock()
	if n := len(ws.idle); n > 0 {
		w := ws.idle[n-1]
		ws.idle = ws.idle[:n-1]
		ws.mu.Unlock()
		w.jobs <- job
		return
	}
	ws.mu.Unlock()
	w := &worker{jobs: make(chan func(), 1)}
	ws.wg.Go(func() { ws.work(w, job) })
}

// work runs job, then the jobs it is given while idle, until ctx is done.
// A worker ends only while it is on the idle list, taking itself off it
// under ws.mu, so that run never hands a job to a worker that has ended.
func (ws *workers) work(w *worker, job func()) {
	for {
		job()
		ws.mu.Lock()
		if len(ws.idle) >= ws.max {
			ws.mu.Unlock()
			return // enough are idle
		}
		ws.idle = append(ws.idle, w)
		ws.mu.Unlock()
		select {
		case job = <-w.jobs:
		case <-ws.ctx.Done():
			ws.mu.Lock()
			if i := slices.Index(ws.idle, w); i >= 0 {
				ws.idle = slices.Delete(ws.idle, i, i+1)
				ws.mu.Unlock()
				return
			}
			ws.mu.Unlock()
			job = <-w.jobs // run took it off the list: its job is on the way
		}
	}
}

// wait waits for every worker to end; ctx must be done.
func (ws *workers) wait() { ws.wg.Wait() }
