// Package authhook serves Dovecot's auth policy HTTP API: the auth_policy_*
// settings of Dovecot 2.3 and 2.4, documented as "Authentication policy
// support" in Dovecot's admin manual. testdata/ holds requests recorded from
// Dovecot 2.3.19, whose behaviour is what this package follows.
//
// Dovecot posts a JSON object of string attributes to {url}?command=allow
// before checking the password, once more after a right password (the
// after-auth check), and to {url}?command=report once it knows the outcome.
// authhook answers every well-formed request with HTTP 200 and
// {"status":S,"msg":M}: S<0 refuses the login with M, S=0 allows it, S>0
// delays it S seconds (the tarpit). Dovecot takes any other answer as "allow"
// (auth_policy_reject_on_fail = no), so 4xx answers are kept for requests that
// are not Dovecot's: wrong method, API header, command, body or address.
//
// authhook knows the wire protocol and nothing about bans: it asks a Guard.
package authhook

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/mailguard/mailguard/internal/dedup"
	"github.com/mailguard/mailguard/internal/listen"
	"github.com/mailguard/mailguard/store"
)

// Guard is what authhook consumes: *guard.Guard implements it. authhook
// imports store (a leaf package) only for the Ban type of Fail's result.
// Implementations must be safe for concurrent use and should return when ctx
// is done (authhook answers at Server.Timeout either way).
type Guard interface {
	// Check tells whether the client, or the user logging in from it, is
	// refused, and how many recent failures count against it.
	Check(ctx context.Context, a netip.Addr, user string) (CheckResult, error)
	// Fail records a failed login; pwhash tells distinct passwords apart.
	Fail(ctx context.Context, a netip.Addr, user, protocol, pwhash string) ([]store.Ban, error)
	// Succeed records a successful login.
	Succeed(ctx context.Context, a netip.Addr, user string) error
}

// CheckResult is what Guard.Check finds.
type CheckResult struct {
	// Refused refuses the login (status -1).
	Refused bool
	// ByUser: the refusal is about the user's account (a ban keyed by user
	// alone), not the client's network; it is answered with RejectUserMsg.
	ByUser bool
	// Failures counts recent failures against the client (address, prefix,
	// user+prefix); UserFailures those against its user from anywhere else.
	// Both feed the Tarpit.
	Failures, UserFailures int
}

// Metrics receives one call per well-formed request, with its verdict (one
// of the Verdict constants) and the time from the request read to the
// decision. It has the shape of policyd.Metrics, so that one metrics type
// serves both front ends. Optional abilities, found by type assertion:
// BadRequestCounter and StoreErrorCounter. Implementations must be safe for
// concurrent use.
type Metrics interface {
	Request(verdict string, d time.Duration)
}

// BadRequestCounter counts requests answered 4xx, by reason (one of the
// Reason constants).
type BadRequestCounter interface {
	BadRequest(reason string)
}

// StoreErrorCounter counts guard calls that failed or timed out.
type StoreErrorCounter interface {
	StoreError()
}

// Verdicts passed to Metrics.Request.
const (
	VerdictAllow      = "allow"       // allow: status 0
	VerdictTarpit     = "tarpit"      // allow: status > 0
	VerdictRefuse     = "refuse"      // allow: status -1, refused by the guard
	VerdictFailOpen   = "fail-open"   // allow: guard error or timeout, status 0
	VerdictFailClosed = "fail-closed" // allow: guard error or timeout, status -1
	VerdictFailure    = "failure"     // report: a failed login, counted
	VerdictSuccess    = "success"     // report: a successful login
	VerdictIgnored    = "ignored"     // report: refused by us, or not a guessing failure
	VerdictError      = "error"       // report: guard error or timeout, not counted
	VerdictGone       = "gone"        // Dovecot hung up before the guard answered
)

// Reasons passed to BadRequestCounter.BadRequest.
const (
	ReasonMethod       = "method"       // 405: not POST
	ReasonUnauthorized = "unauthorized" // 401: API header missing or wrong
	ReasonCommand      = "command"      // 400: not allow or report
	ReasonTooLarge     = "too-large"    // 413: body over MaxBody
	ReasonJSON         = "json"         // 400: not a JSON object of Dovecot's types
	ReasonNoRemote     = "no-remote"    // 400: no remote attribute
	ReasonBadRemote    = "bad-remote"   // 400: remote is not an IP address
)

// Defaults used for zero fields of Server; mailguard's config takes its
// defaults for dovecot.reject_msg, dovecot.max_conns, dovecot.timeout
// (ReadTimeout) and store.timeout from here. DefaultMaxConns: Dovecot's auth
// policy client keeps at most 100 connections per auth process
// (max_parallel_connections in auth-policy.c), one auth process per server;
// 1000 leaves room for several Dovecot servers or proxies on one mailguard.
// DefaultReadTimeout: Dovecot sends a request at once and gives up after 2s.
const (
	DefaultRejectMsg     = "Too many failed logins from your network. Try again later or contact your mail administrator."
	DefaultRejectUserMsg = "Too many failed logins to this account. Try again later from a device you used before, or contact your mail administrator."
	DefaultTempFailMsg   = "Temporary authentication failure, try again later"
	DefaultTimeout       = 500 * time.Millisecond // Dovecot waits 2s (auth_policy_server_timeout_msecs); = policyd.DefaultTimeout (store.timeout)
	DefaultMaxBody       = 16 << 10
	DefaultMaxConns      = 1000
	DefaultMaxConcurrent = 64
	DefaultReadTimeout   = 5 * time.Second
	DefaultIdleTimeout   = 2 * time.Minute
	DefaultSessionTTL    = 2 * time.Minute
	DefaultMaxSessions   = 100_000
)

// Server answers Dovecot's auth policy requests. It is an http.Handler (for
// any path: the command is in the query) and can serve its own listener.
// Set the fields before the first request and do not change them afterwards;
// zero fields take the defaults above. Server is safe for concurrent use.
type Server struct {
	Guard Guard
	// APIHeader is Dovecot's auth_policy_server_api_header, verbatim:
	// "Name: value" (e.g. "Authorization: Bearer KEY"), or a bare value sent
	// as "X-API-Key: value". Requests without it get 401. Empty: no check.
	APIHeader string
	// RejectMsg is shown to refused clients (IMAP "NO [ALERT] msg", POP3
	// "-ERR [AUTH] msg", SMTP "535 5.7.8 Error: authentication failed: msg").
	RejectMsg string
	// RejectUserMsg is shown instead when the refusal is about the user's
	// account (CheckResult.ByUser): a ban keyed by user refuses it from
	// every network but the user's known devices.
	RejectUserMsg string
	// TempFailMsg refuses logins when the guard fails and FailOpen is false.
	TempFailMsg string
	// Tarpit delays the before-auth allow of clients with recent failures.
	// The zero value never delays; cmd uses DefaultTarpit.
	Tarpit Tarpit
	// FailOpen allows logins when the guard errs or does not answer within
	// Timeout (store.fail_mode open, mailguard's default); false refuses them
	// with TempFailMsg.
	FailOpen bool
	// Timeout bounds the guard's work per request.
	Timeout time.Duration
	// MaxBody caps the request body in bytes.
	MaxBody int64
	// MaxConns caps simultaneous connections (Serve only); MaxConcurrent
	// caps guard calls in flight: a request that waits longer than Timeout
	// for a slot is answered per FailOpen.
	MaxConns, MaxConcurrent int
	// ReadTimeout bounds reading a request; IdleTimeout a kept-alive
	// connection between requests (Serve only).
	ReadTimeout, IdleTimeout time.Duration
	// SessionTTL and MaxSessions bound the memory of before-auth allows
	// waiting for their after-auth allow or report.
	SessionTTL  time.Duration
	MaxSessions int
	Log         *slog.Logger // nil: slog.Default()
	Metrics     Metrics      // nil: none

	now      func() time.Time // for tests; nil: time.Now
	once     sync.Once
	hdrName  string
	hdrValue []byte
	sess     *sessions
	// refusedLog: a refused client is logged at info once per
	// refusalLogEvery, its other refusals at debug (no log floods).
	refusedLog dedup.Once
	sem        chan struct{}
	log        *slog.Logger

	mu     sync.Mutex
	srv    *http.Server
	closed bool
}

func (s *Server) init() {
	s.once.Do(func() {
		if s.RejectMsg == "" {
			s.RejectMsg = DefaultRejectMsg
		}
		if s.RejectUserMsg == "" {
			s.RejectUserMsg = DefaultRejectUserMsg
		}
		if s.TempFailMsg == "" {
			s.TempFailMsg = DefaultTempFailMsg
		}
		// The message goes into a Dovecot protocol line.
		s.RejectMsg = oneLine(s.RejectMsg)
		s.RejectUserMsg = oneLine(s.RejectUserMsg)
		s.TempFailMsg = oneLine(s.TempFailMsg)
		s.Timeout = orDefault(s.Timeout, DefaultTimeout)
		s.MaxBody = orDefault(s.MaxBody, DefaultMaxBody)
		s.MaxConns = orDefault(s.MaxConns, DefaultMaxConns)
		s.MaxConcurrent = orDefault(s.MaxConcurrent, DefaultMaxConcurrent)
		s.ReadTimeout = orDefault(s.ReadTimeout, DefaultReadTimeout)
		s.IdleTimeout = orDefault(s.IdleTimeout, DefaultIdleTimeout)
		s.SessionTTL = orDefault(s.SessionTTL, DefaultSessionTTL)
		s.MaxSessions = orDefault(s.MaxSessions, DefaultMaxSessions)
		s.log = s.Log
		if s.log == nil {
			s.log = slog.Default()
		}
		if s.now == nil {
			s.now = time.Now
		}
		s.hdrName, s.hdrValue = parseAPIHeader(s.APIHeader)
		s.sess = newSessions(s.SessionTTL, s.MaxSessions)
		s.sem = make(chan struct{}, s.MaxConcurrent)
	})
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// parseAPIHeader splits auth_policy_server_api_header the way Dovecot does:
// the name before the first ':', the value after it; without ':' the whole
// setting is the value of X-API-Key.
func parseAPIHeader(h string) (name string, value []byte) {
	h = strings.TrimSpace(h)
	if h == "" {
		return "", nil
	}
	name, v, ok := strings.Cut(h, ":")
	if !ok {
		return "X-API-Key", []byte(h)
	}
	return http.CanonicalHeaderKey(strings.TrimSpace(name)), []byte(strings.TrimSpace(v))
}

// authorized reports whether r carries the API header.
func (s *Server) authorized(r *http.Request) bool {
	if s.hdrName == "" {
		return true
	}
	got := []byte(strings.TrimSpace(r.Header.Get(s.hdrName)))
	return subtle.ConstantTimeCompare(got, s.hdrValue) == 1
}

// ListenAndServe listens on addr, "host:port" or "unix:/path", and serves
// until Close. A stale unix socket left by a previous run is replaced.
func (s *Server) ListenAndServe(addr string) error {
	l, err := Listen(addr)
	if err != nil {
		return err
	}
	return s.Serve(l)
}

// Listen opens "host:port" (TCP) or "unix:/path" (mode 0660). It removes a
// unix socket file nobody listens on any more, and refuses one still in use.
func Listen(addr string) (net.Listener, error) {
	l, err := listen.Listen(addr, 0o660, "")
	if err != nil {
		return nil, fmt.Errorf("authhook: %w", err)
	}
	return l, nil
}

// Serve answers requests on l until Close or Shutdown, then returns nil.
// It closes l.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if s.Guard == nil {
		l.Close()
		return errors.New("authhook: Server.Guard is nil")
	}
	srv := s.httpServer()
	err := srv.Serve(netutil.LimitListener(l, s.MaxConns))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("authhook: %w", err)
}

func (s *Server) httpServer() *http.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		s.srv = &http.Server{
			Handler:           s,
			ReadHeaderTimeout: s.ReadTimeout,
			ReadTimeout:       s.ReadTimeout,
			// The reply is written at most Timeout after the body is read.
			WriteTimeout:   s.ReadTimeout + s.Timeout,
			IdleTimeout:    s.IdleTimeout,
			MaxHeaderBytes: 16 << 10,
			ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
		if s.closed {
			s.srv.Close() // Serve after Close returns at once
		}
	}
	return s.srv
}

// Close closes the listeners and connections; Serve returns.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// Shutdown stops accepting, waits for requests in flight until ctx is done,
// then closes; Serve returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}

// refusalLogEvery is how often one refused client is logged at info.
const refusalLogEvery = time.Minute
