package authhook

import (
	"container/list"
	"sync"
	"time"
)

// sessions tells Dovecot's before-auth allow from its after-auth allow, which
// carry the same body and differ only in order: an entry exists between a
// before-auth allow and the next allow or report of the same login attempt.
// It is bounded (the oldest entry goes first) and entries expire after ttl,
// so a lost report costs at most one untarpitted attempt.
type sessions struct {
	mu    sync.Mutex
	ttl   time.Duration
	limit int
	order *list.List // of *sessionEntry, oldest first
	byKey map[string]*list.Element
}

type sessionEntry struct {
	key     string
	created time.Time
}

func newSessions(ttl time.Duration, limit int) *sessions {
	return &sessions{ttl: ttl, limit: limit, order: list.New(), byKey: make(map[string]*list.Element)}
}

// sessionKey names one login attempt: Dovecot's session id, or for Postfix
// SASL (whose session_id is empty) the client address. The login and the
// password hash are part of the key so that parallel attempts from one
// address with different passwords do not pass for each other's second allow.
func sessionKey(r *Request) string {
	id := "s:" + r.SessionID
	if r.SessionID == "" {
		id = "r:" + r.Remote
	}
	return id + "\x00" + r.Login + "\x00" + r.PasswordHash
}

// allow records an allow and reports whether it is the after-auth one.
func (s *sessions) allow(key string, now time.Time) (after bool) {
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
func (s *sessions) done(key string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	if e, ok := s.byKey[key]; ok {
		s.order.Remove(e)
		delete(s.byKey, key)
	}
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
