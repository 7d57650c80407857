package guard

import (
	"sync"
	"time"
)

// once tells whether something keyed was already reported within its
// period, so that a sender hammering past its rate limit makes one info line
// per findtime, not one per recipient. Bounded: past max keys, expired ones
// are dropped, and if none are, the oldest half.
type once struct {
	mu   sync.Mutex
	seen map[string]time.Time // key → end of its quiet period
	max  int
}

// first reports whether key has not been reported since now−period, and
// marks it reported.
func (o *once) first(key string, now time.Time, period time.Duration) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = make(map[string]time.Time)
		if o.max == 0 {
			o.max = 10000
		}
	}
	if until, ok := o.seen[key]; ok && now.Before(until) {
		return false
	}
	if len(o.seen) >= o.max {
		for k, until := range o.seen {
			if !now.Before(until) {
				delete(o.seen, k)
			}
		}
		for k := range o.seen { // map order is random: drops an arbitrary half
			if len(o.seen) < o.max/2 {
				break
			}
			delete(o.seen, k)
		}
	}
	o.seen[key] = now.Add(period)
	return true
}
