package main

import (
	"math/bits"
	"time"
)

// hist is a latency histogram in bounded memory: exact to the microsecond
// below 1024µs, then 64 buckets per power of two (under 1.6% error).
type hist struct {
	counts [hBuckets]uint64
	n      uint64
	max    time.Duration
}

const (
	hExact   = 1024 // µs counted exactly
	hSub     = 64   // buckets per power of two above
	hBuckets = hExact + (64-10)*hSub
)

func bucket(d time.Duration) int {
	us := max(d.Microseconds(), 0)
	if us < hExact {
		return int(us)
	}
	e := bits.Len64(uint64(us)) - 1 // >= 10
	sub := int(us>>(e-6)) & (hSub - 1)
	return hExact + (e-10)*hSub + sub
}

// upper is the largest duration that falls in bucket b.
func upper(b int) time.Duration {
	if b < hExact {
		return time.Duration(b+1)*time.Microsecond - 1
	}
	e := (b-hExact)/hSub + 10
	sub := (b - hExact) % hSub
	lo := int64(hSub+sub) << (e - 6)
	return time.Duration(lo+(1<<(e-6)))*time.Microsecond - 1
}

func (h *hist) add(d time.Duration) {
	h.counts[bucket(d)]++
	h.n++
	h.max = max(h.max, d)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns an upper bound of the q-quantile (0 < q <= 1), never more
// than the maximum seen.
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.999999)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			return min(upper(b), h.max)
		}
	}
	return h.max
}
