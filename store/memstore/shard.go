package memstore

import (
	"math"
	"slices"
	"sync"
	"time"

	"github.com/mailguard/mailguard/store"
)

// shards is the number of independently locked parts of the state. A power of
// two; a subject's window, bans and history live in one shard, so a Hit is
// atomic under one lock.
const shards = 64

// maxHistory caps the ban times kept per (jail, subject): far more than any
// escalation needs, and a bound on what manual bans can pile up.
const maxHistory = 256

// minHistoryKeep is how long a ban placed with Ban (which carries no
// recidive window) counts towards escalation, at least.
const minHistoryKeep = 7 * 24 * time.Hour

type wkey struct {
	jail    string
	subject store.Subject
}

// window is one sliding failure window: the times of at most MaxRetry+1 most
// recent failures, ascending, and their members when any Hit named one. A
// member is kept as a 64-bit hash (see memberHash), not the Hit's string
// (prefix|user|password hash, ~100 bytes): distinct passwords only need to
// be told apart, and the password hash is not kept.
type window struct {
	span    time.Duration // the last Hit's Span, for the janitor and Stats
	times   []int64       // unix nanoseconds, ascending
	members []uint64      // parallel to times; nil while no member was given
}

// first returns the index of the first failure younger than span at n.
func (w *window) first(n int64, span time.Duration) int {
	cut := n - int64(span)
	i := 0
	for i < len(w.times) && w.times[i] <= cut {
		i++
	}
	return i
}

// live returns the failures younger than span at n.
func (w *window) live(n int64, span time.Duration) int {
	return len(w.times) - w.first(n, span)
}

// prune drops the failures older than span at n.
func (w *window) prune(n int64, span time.Duration) {
	w.drop(w.first(n, span))
}

// drop removes the i oldest failures.
func (w *window) drop(i int) {
	if i <= 0 {
		return
	}
	w.times = w.times[:copy(w.times, w.times[i:])]
	if w.members != nil {
		w.members = w.members[:copy(w.members, w.members[i:])]
	}
}

func (w *window) has(member uint64) bool {
	return slices.Contains(w.members, member)
}

// add records a failure at n with member (0: none), keeping at most limit
// failures (the newest). The slices grow as failures come: most windows
// never hold more than one.
func (w *window) add(n int64, member uint64, limit int) {
	if l := len(w.times); l > 0 && n < w.times[l-1] {
		n = w.times[l-1] // the clock stepped back: keep the times ascending
	}
	if member != 0 && w.members == nil {
		w.members = make([]uint64, len(w.times), len(w.times)+1)
	}
	if len(w.times) >= limit {
		w.drop(len(w.times) - limit + 1)
	}
	w.times = append(w.times, n)
	if w.members != nil {
		w.members = append(w.members, member)
	}
}

// history holds the creation times of the bans of one (jail, subject), for
// escalation.
type history struct {
	times []int64 // unix nanoseconds, ascending, distinct
	keep  int64   // forgotten as a whole after this
	span  int64   // the longest a time was kept for: older times are dropped
}

// since counts the bans created after cut.
func (h *history) since(cut int64) int {
	if h == nil {
		return 0
	}
	n := 0
	for i := len(h.times) - 1; i >= 0 && h.times[i] > cut; i-- {
		n++
	}
	return n
}

func (h *history) add(t, keep int64) {
	i, found := slices.BinarySearch(h.times, t)
	if !found {
		h.times = slices.Insert(h.times, i, t)
	}
	if len(h.times) > maxHistory {
		h.times = h.times[:copy(h.times, h.times[len(h.times)-maxHistory:])]
	}
	h.keep = max(h.keep, keep)
	h.span = max(h.span, keep-t)
}

// prune forgets the bans that no longer count at n.
func (h *history) prune(n int64) {
	cut := n - h.span
	i := 0
	for i < len(h.times) && h.times[i] <= cut {
		i++
	}
	h.times = h.times[:copy(h.times, h.times[i:])]
}

type known struct {
	exp   int64 // unix nanoseconds
	saved int64 // exp as last written to the journal
}

type shard struct {
	mu      sync.RWMutex
	windows map[wkey]*window
	bans    map[store.Subject][]store.Ban // at most one per jail
	history map[wkey]*history
	known   map[string]known
	_       [64]byte // keeps neighbouring shards' locks off one cache line
}

func (sh *shard) init() {
	sh.windows = make(map[wkey]*window)
	sh.bans = make(map[store.Subject][]store.Ban)
	sh.history = make(map[wkey]*history)
	sh.known = make(map[string]known)
}

// putBan places b, replacing b.Jail's ban on b.Subject.
func (sh *shard) putBan(b store.Ban) {
	bs := sh.bans[b.Subject]
	for i := range bs {
		if bs[i].Jail == b.Jail {
			bs[i] = b
			return
		}
	}
	sh.bans[b.Subject] = append(bs, b)
}

func (sh *shard) addHistory(k wkey, t, keep int64) {
	h := sh.history[k]
	if h == nil {
		h = &history{}
		sh.history[k] = h
	}
	h.add(t, keep)
}

// sweep frees what is expired at n.
func (sh *shard) sweep(n int64) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for k, w := range sh.windows {
		w.prune(n, w.span)
		if len(w.times) == 0 {
			delete(sh.windows, k)
		}
	}
	for s, bs := range sh.bans {
		live := slices.DeleteFunc(bs, func(b store.Ban) bool { return nanos(b.Expires) <= n })
		if len(live) == 0 {
			delete(sh.bans, s)
		} else {
			sh.bans[s] = live
		}
	}
	for k, h := range sh.history {
		h.prune(n)
		if h.keep <= n || len(h.times) == 0 {
			delete(sh.history, k)
		}
	}
	for key, kn := range sh.known {
		if kn.exp <= n {
			delete(sh.known, key)
		}
	}
}

// nanos is t in unix nanoseconds, saturating instead of overflowing.
func nanos(t time.Time) int64 {
	switch {
	case t.Before(minTime):
		return math.MinInt64
	case t.After(maxTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}

var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)
