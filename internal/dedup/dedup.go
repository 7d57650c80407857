// Package dedup rate-limits what an outsider can make mailguard say: a log
// line per cause (or per banned subject) per period, with a count of the
// lines held back, so that a client hammering a refusal, a bad API key or a
// down store makes one line per period, not one per request.
//
// It is mailguard's only rate limiter for log lines: front ends, guard and
// the stores use it.
package dedup

import (
	"sync"
	"time"
)

// DefaultPeriod is the period of a Limiter whose Period is zero: at most one
// line per key every 5 seconds, the rate README promises for store errors.
const DefaultPeriod = 5 * time.Second

// DefaultMax is the number of keys a Limiter whose Max is zero holds.
const DefaultMax = 10_000

// Limiter lets the first event of each key through per period and counts
// the others. The zero value is ready to use. It is safe for concurrent use.
//
// Its memory is bounded: past Max keys, keys whose period is over are
// dropped, and if that is not enough an arbitrary half; the suppressed
// counts of dropped keys are lost (a count is then a lower bound).
type Limiter struct {
	Period time.Duration // zero: DefaultPeriod
	Max    int           // zero: DefaultMax

	mu   sync.Mutex
	seen map[string]entry
}

type entry struct {
	until      time.Time // end of the quiet period
	suppressed int       // events held back since the last one let through
}

// Allow reports whether an event of key at now may be logged, and if so how
// many events of key were suppressed since the last one allowed.
func (l *Limiter) Allow(key string, now time.Time) (ok bool, suppressed int) {
	return l.AllowEvery(key, now, l.Period)
}

// AllowEvery is Allow with a period of its own for this call (zero:
// the Limiter's Period).
func (l *Limiter) AllowEvery(key string, now time.Time, period time.Duration) (ok bool, suppressed int) {
	if period <= 0 {
		period = l.Period
	}
	if period <= 0 {
		period = DefaultPeriod
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = make(map[string]entry)
	}
	e, found := l.seen[key]
	if found && now.Before(e.until) {
		e.suppressed++
		l.seen[key] = e
		return false, 0
	}
	if !found {
		l.makeRoom(now)
	}
	l.seen[key] = entry{until: now.Add(period)}
	return true, e.suppressed
}

// makeRoom keeps the map under Max. l.mu must be held.
func (l *Limiter) makeRoom(now time.Time) {
	limit := l.Max
	if limit <= 0 {
		limit = DefaultMax
	}
	if len(l.seen) < limit {
		return
	}
	for k, e := range l.seen {
		if !now.Before(e.until) && e.suppressed == 0 {
			delete(l.seen, k)
		}
	}
	for k := range l.seen { // map order is random: drops an arbitrary half
		if len(l.seen) < limit/2 {
			break
		}
		delete(l.seen, k)
	}
}

// Len returns the number of keys held.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}
