// Package web is the TOTP approval and self-enrolment page (issue 11): a
// small server-rendered site, meant to sit behind the webmail's TLS reverse
// proxy, where a user whose mail login was refused for want of an approved
// device proves a current code and approves that login's network (or the
// browser's own), and where a new user enrols through the one-time link
// `mailguard totp enroll USER --link` prints.
//
// Pages are html/template, without JavaScript, and work as plain forms.
// Every response carries a strict Content-Security-Policy, frame-ancestors
// 'none', no-referrer, nosniff and no-store, and HSTS when it reached the
// proxy over https. Every form carries a CSRF token bound to a cookie (and,
// once signed in, to the session). Sessions live in memory, bounded in
// count, and end SessionTTL after the code that opened them. A page never
// shows anything about a user other than the one whose code was proven.
package web

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mailguard/mailguard/internal/dedup"
	"github.com/mailguard/mailguard/internal/listen"
	"github.com/mailguard/mailguard/totp"
)

// Service is what the page needs of the TOTP service (*totp.Service). Its
// methods are called concurrently.
//
// The errors that are the user's doing are totp's: ErrWrongCode,
// ErrReplay and ErrNotEnrolled get one answer that does not tell them
// apart (so the page does not say who is enrolled), ErrRefused (too many
// wrong codes) asks to wait, ErrNoLink says the link is void. Any other
// error is a failure: the page asks to try again later and logs it.
type Service interface {
	// Verify checks a current code of user, typed from the browser's
	// address (wrong codes count against user and address).
	Verify(ctx context.Context, user, code string, from netip.Addr) error
	// Pending returns user's refused logins waiting for approval.
	Pending(ctx context.Context, user string) ([]Pending, error)
	// Trust approves (user, prefix) for ttl (zero: the Service's TrustTTL).
	Trust(ctx context.Context, user string, prefix netip.Prefix, ttl time.Duration) error
	// PrefixOf returns the trust prefix an approval of address a covers.
	PrefixOf(a netip.Addr) netip.Prefix
	// Enrolment returns the user and otpauth:// URL of an enrolment link's
	// token, which stays valid until confirmed.
	Enrolment(ctx context.Context, token string) (user, otpauthURL string, err error)
	// ConfirmEnrolment makes the enrolment count once a first code is right.
	ConfirmEnrolment(ctx context.Context, token, code string, from netip.Addr) error
}

// Pending is one refused login waiting for approval.
type Pending = totp.Pending

var _ Service = (*totp.Service)(nil)

// Defaults for zero fields of Server.
const (
	// DefaultSessionTTL is how long a proven code keeps the user signed in:
	// long enough to pick logins and approve them, short enough that a
	// forgotten browser tab is harmless.
	DefaultSessionTTL = 10 * time.Minute
	// DefaultMaxSessions bounds the sessions held; at the bound the oldest
	// ends. A session needs a right code, so only users fill it.
	DefaultMaxSessions = 1000
	// DefaultMaxBody caps a form's body (the largest, the approval form,
	// is a few hundred bytes).
	DefaultMaxBody = 16 << 10
	// DefaultMaxConns caps the connections of Serve (the proxy keeps a few).
	DefaultMaxConns          = 64
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultReadTimeout       = 10 * time.Second
	DefaultIdleTimeout       = time.Minute
	DefaultWriteTimeout      = 30 * time.Second
	// DefaultTimeout bounds the Service's work for one request.
	DefaultTimeout = 5 * time.Second
)

// EnrolPath is where the page serves an enrolment link, under its public
// URL (totp.url): URL + EnrolPath + token, the link `mailguard totp enroll
// USER --link` prints.
const EnrolPath = "/enrol/"

// Server serves the pages. It is an http.Handler; Serve runs it on a
// listener of its own. Set the fields before the first request and do not
// change them; zero fields take the defaults above, and Server never writes
// to them. Server is safe for concurrent use.
type Server struct {
	Service Service
	// TrustedProxies are the reverse proxies whose X-Forwarded-For and
	// X-Forwarded-Proto count. The client is the right-most address of
	// X-Forwarded-For that is not a trusted proxy. A request from a trusted
	// proxy without a usable X-Forwarded-For is refused (its own address
	// must never be approved). A peer on a unix socket counts as a trusted
	// proxy. Empty: a TCP peer is the client.
	TrustedProxies []netip.Prefix
	// TrustTTL is passed to Service.Trust and shown to the user: set it to
	// the Service's (totp.trust_ttl). Zero: the Service's, not shown.
	TrustTTL time.Duration
	// BasePath is the path under which the proxy publishes the pages (the
	// path of totp.url); cookies are scoped to it. Links are relative, so
	// the proxy may strip it. Zero: "/".
	BasePath string
	// SessionTTL and MaxSessions bound sessions (see the defaults).
	SessionTTL  time.Duration
	MaxSessions int
	// MaxBody caps a request body in bytes; Timeout bounds the Service's
	// work per request.
	MaxBody int64
	Timeout time.Duration
	// MaxConns caps the connections of Serve: at the cap the connection
	// idle the longest is closed. The timeouts bound a request's header, a
	// whole request, a kept-alive connection, and an answer (Serve only).
	MaxConns                                                  int
	ReadHeaderTimeout, ReadTimeout, IdleTimeout, WriteTimeout time.Duration
	Log                                                       *slog.Logger // nil: slog.Default()

	now func() time.Time // for tests; nil: time.Now

	once     sync.Once
	mux      *http.ServeMux
	log      *slog.Logger
	key      []byte // CSRF MAC key, new per process
	sessions *sessions
	logs     dedup.Limiter
	basePath string
	srv      listen.HTTP
}

func (s *Server) init() {
	s.once.Do(func() {
		s.log = s.Log
		if s.log == nil {
			s.log = slog.Default()
		}
		if s.now == nil {
			s.now = time.Now
		}
		s.key = make([]byte, 32)
		rand.Read(s.key)
		s.sessions = &sessions{ttl: listen.OrDefault(s.SessionTTL, DefaultSessionTTL), max: listen.OrDefault(s.MaxSessions, DefaultMaxSessions)}
		s.basePath = s.BasePath
		if s.basePath == "" || s.basePath[len(s.basePath)-1] != '/' {
			s.basePath += "/"
		}
		m := http.NewServeMux()
		m.HandleFunc("GET /{$}", s.home)
		m.HandleFunc("POST /login", s.login)
		m.HandleFunc("POST /approve", s.approve)
		m.HandleFunc("POST /logout", s.logout)
		m.HandleFunc("GET "+EnrolPath+"{token}", s.enrolPage)
		m.HandleFunc("GET "+EnrolPath+"{token}/qr.png", s.enrolQR)
		m.HandleFunc("POST "+EnrolPath+"{token}", s.enrolConfirm)
		m.HandleFunc("GET /style.css", s.style)
		m.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
			s.fail(w, r, http.StatusNotFound, "There is no such page.")
		})
		s.mux = m
	})
}

// ServeHTTP answers one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.init()
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
	c, err := s.client(r)
	if err != nil {
		s.warn("proxy", "totp web: request refused", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "bad request: the proxy did not say which address the browser has", http.StatusBadRequest)
		return
	}
	if c.https {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if s.basePath != "/" {
		// The proxy may pass the public path on instead of stripping it.
		if rest, ok := strings.CutPrefix(r.URL.Path, s.basePath); ok {
			r.URL.Path, r.URL.RawPath = "/"+rest, ""
		}
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(w, r.Body, listen.OrDefault(s.MaxBody, DefaultMaxBody))
	}
	s.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), clientKey{}, c)))
}

// csp allows the page's own stylesheet and images (the QR code) and
// nothing else: no script at all, no framing, forms only to itself.
const csp = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Serve answers on l until Close or Shutdown, then returns nil. It closes l.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	srv, cl := listen.NewServer(l, s, listen.Limits{
		MaxConns:          listen.OrDefault(s.MaxConns, DefaultMaxConns),
		ReadHeaderTimeout: listen.OrDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		ReadTimeout:       listen.OrDefault(s.ReadTimeout, DefaultReadTimeout),
		IdleTimeout:       listen.OrDefault(s.IdleTimeout, DefaultIdleTimeout),
		WriteTimeout:      listen.OrDefault(s.WriteTimeout, DefaultWriteTimeout),
	}, s.log)
	if err := s.srv.Serve(srv, cl); err != nil {
		return fmt.Errorf("totp web: %w", err)
	}
	return nil
}

// Close closes the listener and every connection; Serve returns.
func (s *Server) Close() error { return s.srv.Close() }

// warn logs a line a client can cause, at most one per cause per period.
func (s *Server) warn(cause, msg string, args ...any) {
	if ok, n := s.logs.Allow(cause, s.now()); ok {
		s.log.Warn(msg, append(args, "suppressed", n)...)
	}
}
