package web

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// session is a signed-in user: the user proved a code at created.
type session struct {
	id      string
	user    string
	expires time.Time
}

// sessions holds the signed-in users in memory, at most max; an expired
// session is gone, and at the bound the one closest to expiry makes room.
type sessions struct {
	ttl time.Duration
	max int

	mu sync.Mutex
	m  map[string]session
}

func (ss *sessions) add(user string, now time.Time) session {
	s := session{id: randomToken(), user: user, expires: now.Add(ss.ttl)}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m = map[string]session{}
	}
	if len(ss.m) >= ss.max {
		var oldest string
		for id, o := range ss.m {
			if !now.Before(o.expires) {
				delete(ss.m, id)
			} else if oldest == "" || o.expires.Before(ss.m[oldest].expires) {
				oldest = id
			}
		}
		if len(ss.m) >= ss.max {
			delete(ss.m, oldest)
		}
	}
	ss.m[s.id] = s
	return s
}

func (ss *sessions) get(id string, now time.Time) (session, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.m[id]
	if !ok {
		return session{}, false
	}
	if !now.Before(s.expires) {
		delete(ss.m, id)
		return session{}, false
	}
	return s, true
}

func (ss *sessions) end(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, id)
}

func (ss *sessions) len() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.m)
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Cookie names. Over https they get the __Host- prefix, which the browser
// accepts only from a secure origin, for Path=/ and without Domain, so
// another site under the same domain cannot plant one; that needs BasePath
// "/".
const (
	sessionCookie = "mailguard_totp"
	csrfCookie    = "mailguard_csrf"
)

func (s *Server) cookieName(name string, c client) string {
	if c.https && s.basePath == "/" {
		return "__Host-" + name
	}
	return name
}

func (s *Server) setCookie(w http.ResponseWriter, c client, name, value string, maxAge time.Duration) {
	http.SetCookie(w, &http.Cookie{
		Name: s.cookieName(name, c), Value: value, Path: s.basePath,
		MaxAge: int(maxAge / time.Second), Secure: c.https, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
}

func (s *Server) cookie(r *http.Request, name string) string {
	k, err := r.Cookie(s.cookieName(name, clientOf(r)))
	if err != nil {
		return ""
	}
	return k.Value
}

// csrfNonce returns the browser's CSRF cookie, setting a new one if it has
// none. A form's token is a MAC of it (and of the session, when signed in),
// so a page of another site can neither read nor forge one.
func (s *Server) csrfNonce(w http.ResponseWriter, r *http.Request) string {
	if n := s.cookie(r, csrfCookie); len(n) == 43 {
		return n
	}
	n := randomToken()
	s.setCookie(w, clientOf(r), csrfCookie, n, 0)
	return n
}

func (s *Server) csrfToken(nonce, sessionID string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(nonce))
	m.Write([]byte{0})
	m.Write([]byte(sessionID))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// csrfOK checks the form's token against the cookie (and session).
func (s *Server) csrfOK(r *http.Request, sessionID string) bool {
	n := s.cookie(r, csrfCookie)
	if n == "" {
		return false
	}
	want := s.csrfToken(n, sessionID)
	return hmac.Equal([]byte(r.PostFormValue("csrf")), []byte(want))
}

// signedIn returns the request's session.
func (s *Server) signedIn(r *http.Request) (session, bool) {
	id := s.cookie(r, sessionCookie)
	if id == "" {
		return session{}, false
	}
	return s.sessions.get(id, s.now())
}
