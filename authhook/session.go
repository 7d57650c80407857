package authhook

import (
	"container/list"
	"hash/maphash"
	"sync"
	"time"
)

// sessions tells Dovecot's before-auth allow from its after-auth allow, which
// carry the same body and differ only in order: an entry exists between a
// before-auth allow and the next allow or report of the same login attempt.
// It is bounded (the oldest entry goes first) and entries expire after ttl,
// so a lost report costs at most one untarpitted attempt. An entry is a
// fixed-size hash of the attempt, whatever the length of the login: about
// 150 bytes, so DefaultMaxSessions entries hold about 15 MB.
type sessions struct {
	mu    sync.Mutex
	seed  maphash.Seed
	ttl   time.Duration
	limit int
	order *list.List // of *sessionEntry, oldest first
	byKey map[uint64]*list.Element
}

type sessionEntry struct {
	key     uint64
	created time.Time
}

func newSessions(ttl time.Duration, limit int) *sessions {
	return &sessions{seed: maphash.MakeSeed(), ttl: ttl, limit: limit, order: list.New(), byKey: make(map[uint64]*list.Element)}
}

// sessionKey names one login attempt: Dovecot's session id, or for Postfix
// SASL (whose session_id is empty) the client address. The login and the
// password hash are part of the key so that parallel attempts from one
// address with different passwords do not pass for each other's second allow.
func sessionKey(r *Request) attempt {
	id := "s:" + r.SessionID
	if r.SessionID == "" {
		id = "r:" + r.Remote
	}
	return attempt{id, r.Login, r.PasswordHash}
}

// attempt is what names a login attempt, before hashing.
type attempt struct{ id, login, pwhash string }

// hash is a's key: 64 bits of a seeded hash, so that a client cannot make
// two attempts collide (by chance: about one in 10^10 at 100,000 entries,
// and a collision only spares one attempt its tarpit).
func (s *sessions) hash(a attempt) uint64 {
	var h maphash.Hash
	h.SetSeed(s.seed)
	for _, f := range []string{a.id, a.login, a.pwhash} {
		h.WriteString(f)
		h.WriteByte(0)
	}
	return h.Sum64()
}

// allow records an allow and reports whether it is the after-auth one.
func (s *sessions) allow(a attempt, now time.Time) (after bool) {
	key := s.hash(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	if e, ok := s.byKey[key]; ok {
		s.order.Remove(e)
		delete(s.byKey, key)
		return true
	}
	for s.order.Len() >= s.limit {
		s.removeFront()
	}
	s.byKey[key] = s.order.PushBack(&sessionEntry{key: key, created: now})
	return false
}

// done forgets a login attempt once Dovecot reports it.
func (s *sessions) done(a attempt, now time.Time) {
	key := s.hash(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	if e, ok := s.byKey[key]; ok {
		s.order.Remove(e)
		delete(s.byKey, key)
	}
}

// sweep forgets the expired entries.
func (s *sessions) sweep(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
}

func (s *sessions) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len()
}

func (s *sessions) expire(now time.Time) {
	for e := s.order.Front(); e != nil; e = s.order.Front() {
		if now.Sub(e.Value.(*sessionEntry).created) < s.ttl {
			return
		}
		s.removeFront()
	}
}

func (s *sessions) removeFront() {
	e := s.order.Front()
	delete(s.byKey, e.Value.(*sessionEntry).key)
	s.order.Remove(e)
}
