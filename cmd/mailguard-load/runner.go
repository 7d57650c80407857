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
// checked by the caller; duration must not be zero. Requests in flight at
// the end get up to grace more to be answered, so that the server sees
// connections closed between requests rather than reset in the middle of
// one (and logs nothing about them).
//
// With rate > 0 the load is open-loop: request i is due at i/rate seconds
// after the start, whichever connection sends it. A request sent late (its
// connection was still waiting for the previous answer) counts from when it
// was due, so that a server falling behind shows in the percentiles instead
// of slowing the senders down; one sent on time counts from when it was sent.
type runner struct {
	conns    int
	requests int
	duration time.Duration
	rate     float64 // requests per second over all connections; 0: as fast as answered
	open     opener
}

const grace = time.Second

type result struct {
	sent     int // requests answered
	errs     int
	firstErr error
	elapsed  time.Duration
	lat      hist
	labels   map[string]int
}

func (r *runner) run(ctx context.Context) *result {
	stop, cancel := context.WithTimeout(ctx, r.duration) // no new requests
	defer cancel()
	ctx, cancelIO := context.WithTimeout(ctx, r.duration+grace) // requests in flight
	defer cancelIO()
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
			for stop.Err() == nil {
				if s == nil {
					var err error
					if s, err = r.open(stop, w); err != nil {
						if stop.Err() == nil {
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
				if due := t0.Add(time.Duration(float64(i) / r.rate * float64(time.Second))); r.rate > 0 && start.Before(due) {
					// Early: wait, and count from the wake-up, since Go's
					// timers wake up to a millisecond late on an idle process.
					if !sleepUntil(stop, due) {
						return
					}
					start = time.Now()
				} else if r.rate > 0 {
					start = due // late: the wait counts
				}
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

// sleepUntil waits until t, or returns false when ctx is done first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}
