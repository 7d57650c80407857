package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// A session is one persistent connection to the server under test. do sends
// request number i and waits for the answer; label is a short name of the
// answer (an action's first word, an HTTP status) counted in the summary.
// A session is used by one goroutine.
type session interface {
	do(ctx context.Context, i int) (label string, err error)
	Close() error
}

// An opener opens the session of worker w. Each load mode (the Postfix policy
// protocol here; Dovecot's auth-policy HTTP later) is an opener.
type opener func(ctx context.Context, w int) (session, error)

// runner drives conns sessions in parallel until requests are sent (if not
// zero) or duration has passed, whichever comes first. Both bounds are
// checked by the caller; duration must not be zero.
type runner struct {
	conns    int
	requests int
	duration time.Duration
	open     opener
}

type result struct {
	sent     int // requests answered
	errs     int
	firstErr error
	elapsed  time.Duration
	lat      hist
	labels   map[string]int
}

func (r *runner) run(ctx context.Context) *result {
	ctx, cancel := context.WithTimeout(ctx, r.duration)
	defer cancel()
	var (
		next atomic.Int64
		mu   sync.Mutex
		res  = &result{labels: map[string]int{}}
		wg   sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		res.errs++
		if res.firstErr == nil {
			res.firstErr = err
		}
	}
	t0 := time.Now()
	for w := range r.conns {
		wg.Go(func() {
			var h hist
			labels := map[string]int{}
			defer func() {
				mu.Lock()
				res.lat.merge(&h)
				for k, v := range labels {
					res.labels[k] += v
				}
				mu.Unlock()
			}()
			var s session
			defer func() {
				if s != nil {
					s.Close()
				}
			}()
			for ctx.Err() == nil {
				if s == nil {
					var err error
					if s, err = r.open(ctx, w); err != nil {
						if ctx.Err() == nil {
							fail(err)
						}
						return // a worker that cannot connect stops
					}
				}
				i := int(next.Add(1)) - 1
				if r.requests > 0 && i >= r.requests {
					return
				}
				start := time.Now()
				label, err := s.do(ctx, i)
				if err != nil {
					if d, _ := ctx.Deadline(); ctx.Err() != nil || !time.Now().Before(d) {
						return // cut by the time limit or ^C: not the server's fault
					}
					fail(err)
					s.Close()
					s = nil // reconnect, as Postfix would
					continue
				}
				h.add(time.Since(start))
				labels[label]++
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(t0)
	res.sent = int(res.lat.n)
	return res
}
