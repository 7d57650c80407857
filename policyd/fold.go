package policyd

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"time"
)

// fold answers the second of two equal recipient requests from the first.
//
// With smtpd_delay_reject=yes (the default), a check_policy_service listed in
// two restriction lists (client and recipient restrictions, say) is asked
// twice for each RCPT, one request right after the other's answer. When both
// listings are written the same, Postfix sends both on one connection; when
// they differ (another policy_context or timeout) it keeps a connection per
// listing. Counting both would halve every user's recipient limit.
//
// So the server remembers, for repeatWindow, a hash of every counted request
// (policy_context left out) with its answer. An equal request within that
// time, on any connection, gets the same answer and is not counted again: the
// attributes instance, client_address, client_port, recipient and
// recipient_count tell one RCPT of one SMTP session from any other. A third
// equal request counts again: only pairs fold. The price: a client that
// retries the very same RCPT within a second of the previous answer (same
// transaction, recipient_count unchanged because it was refused) counts once
// for two tries when the service is listed once.
type fold struct {
	mu    sync.Mutex
	seed  maphash.Seed
	seen  map[uint64]folded
	order []foldKey // insertion order, for expiry; order[head:] is live
	head  int
}

type folded struct {
	action, verdict string
	at              time.Time
	repeated        bool
}

type foldKey struct {
	key uint64
	at  time.Time
}

// maxFolded bounds memory: beyond it (about 100k counted requests within
// repeatWindow) requests are not remembered and pairs count twice.
const maxFolded = 100_000

func newFold() *fold {
	return &fold{seed: maphash.MakeSeed(), seen: make(map[uint64]folded)}
}

func (f *fold) key(r *Request) uint64 {
	var h maphash.Hash
	h.SetSeed(f.seed)
	var n [8]byte
	for _, a := range r.attrs {
		if a.name == "policy_context" {
			continue
		}
		binary.LittleEndian.PutUint64(n[:], uint64(len(a.name)))
		h.Write(n[:])
		h.WriteString(a.name)
		binary.LittleEndian.PutUint64(n[:], uint64(len(a.value)))
		h.Write(n[:])
		h.WriteString(a.value)
	}
	return h.Sum64()
}

// repeat returns the answer to an equal request seen within repeatWindow, if
// that request was not itself a repeat, and marks it repeated.
func (f *fold) repeat(key uint64, now time.Time) (action, verdict string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire(now)
	e, ok := f.seen[key]
	if !ok || e.repeated {
		return "", "", false
	}
	e.repeated = true
	f.seen[key] = e
	return e.action, e.verdict, true
}

// remember records the answer to a counted request.
func (f *fold) remember(key uint64, action, verdict string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expire(now)
	if len(f.seen) >= maxFolded {
		return
	}
	f.seen[key] = folded{action: action, verdict: verdict, at: now}
	f.order = append(f.order, foldKey{key, now})
}

func (f *fold) expire(now time.Time) {
	for f.head < len(f.order) && now.Sub(f.order[f.head].at) >= repeatWindow {
		k := f.order[f.head]
		if e, ok := f.seen[k.key]; ok && e.at.Equal(k.at) {
			delete(f.seen, k.key)
		}
		f.head++
	}
	if f.head > 1024 && 2*f.head > len(f.order) {
		f.order = append(f.order[:0], f.order[f.head:]...)
		f.head = 0
	}
}
