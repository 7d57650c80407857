// Package dedup remembers what was already reported, so that a client
// hammering a refusal or a rate limit makes one info line per period, not one
// per request.
package dedup

import (
	"sync"
	"time"
)

// Once tells whether a key was already reported within its period. The zero
// value is ready to use and holds at most 10,000 keys: past Max, expired
// keys are dropped, and if that is not enough, an arbitrary half.
// It is safe for concurrent use.
type Once struct {
	Max int // zero: 10,000

	mu   sync.Mutex
	seen map[string]time.Time // key → end of its quiet period
}

// First reports whether key has not been reported since now−period, and
// marks it reported.
func (o *Once) First(key string, now time.Time, period time.Duration) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = make(map[string]time.Time)
		if o.Max == 0 {
			o.Max = 10000
		}
	}
	if until, ok := o.seen[key]; ok && now.Before(until) {
		return false
	}
	if len(o.seen) >= o.Max {
		for k, until := range o.seen {
			if !now.Before(until) {
				delete(o.seen, k)
			}
		}
		for k := range o.seen { // map order is random: drops an arbitrary half
			if len(o.seen) < o.Max/2 {
				break
			}
			delete(o.seen, k)
		}
	}
	o.seen[key] = now.Add(period)
	return true
}
