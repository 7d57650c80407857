// Package authhook serves Dovecot's auth policy HTTP API: the auth_policy_*
// settings of Dovecot 2.3 and 2.4, documented as "Authentication policy
// support" in Dovecot's admin manual. testdata/ holds requests recorded from
// Dovecot 2.3.19, whose behaviour is what this package follows, and requests
// built from Dovecot 2.4's source (src/auth/auth-policy.c), which adds
// fail_type to reports.
//
// Dovecot posts a JSON object of string attributes to {url}?command=allow
// before checking the password, once more after a right password (the
// after-auth check), and to {url}?command=report once it knows the outcome.
// authhook answers every well-formed request with HTTP 200 and
// {"status":S,"msg":M}: S<0 refuses the login with M, S=0 allows it, S>0
// delays it S seconds (the tarpit). Dovecot takes any other answer as "allow"
// (auth_policy_reject_on_fail = no), so 4xx answers are kept for requests that
// are not Dovecot's: wrong method, API header, command, body or address; a
// 4xx answer closes its connection.
//
// authhook knows the wire protocol and nothing about bans: it asks a Guard.
package authhook

import (
	"container/list"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mailguard/mailguard/internal/deadline"
	"github.com/mailguard/mailguard/internal/dedup"
	"github.com/mailguard/mailguard/internal/listen"
)

// Guard is what authhook consumes: *guard.Guard implements Check and
// Succeed, and cmd adapts its Fail. Implementations must be safe for
// concurrent use and should return when ctx is done (authhook answers at
// Server.Timeout either way).
type Guard interface {
	// Check tells whether the client, or the user logging in from it, is
	// refused, and how many recent failures count against it.
	Check(ctx context.Context, a netip.Addr, user string) (CheckResult, error)
	// Fail records a failed login; pwhash tells distinct passwords apart.
	Fail(ctx context.Context, a netip.Addr, user, protocol, pwhash string) error
	// Succeed records a successful login.
	Succeed(ctx context.Context, a netip.Addr, user string) error
}

// AfterAuthGuard is a Guard with a check of its own for the after-auth allow
// (Dovecot's second allow: the password was right), found by type
// assertion: the TOTP second factor (guard.CheckAfterAuth). A Guard without
// it is asked Check in both allows.
type AfterAuthGuard interface {
	CheckAfterAuth(ctx context.Context, a netip.Addr, user, protocol string) (CheckResult, error)
}

// ProtocolGuard is a Guard whose check also takes the login's protocol
// (imap, pop3, ...), found by type assertion: guard names it in the audit
// trail's refusal events. A Guard without it is asked Check.
type ProtocolGuard interface {
	CheckProtocol(ctx context.Context, a netip.Addr, user, protocol string) (CheckResult, error)
}

// CheckResult is what Guard.Check finds.
type CheckResult struct {
	// Refused refuses the login (status -1).
	Refused bool
	// Banned names the subject of the ban that refuses (a prefix, a user):
	// refusal log lines are rate-limited per banned subject.
	Banned string
	// ByUser: the refusal is about the user's account (a ban keyed by user
	// alone), not the client's network; it is answered with RejectUserMsg.
	ByUser bool
	// Failures counts recent failures against the client (address, prefix,
	// user+prefix); UserFailures those against its user from anywhere else.
	// Both feed the Tarpit.
	Failures, UserFailures int
	// SecondFactor (after-auth only) refuses a right password: the user has
	// enrolled TOTP and this device is not approved; answered with
	// SecondFactorMsg.
	SecondFactor bool
	// Ref names a refusal for the audit trail (package audit), "" if none:
	// it is in the refusal log line and, with Server.ReplyRef, at the end
	// of the msg ("(ref ID)").
	Ref string
}

// Metrics receives what Server counts. It has the shape of policyd.Metrics,
// so that one metrics type serves both front ends. Implementations must be
// safe for concurrent use.
type Metrics interface {
	// Request is called once per well-formed request with its verdict (a
	// Verdict constant) and the time from the request read to the decision.
	Request(verdict string, d time.Duration)
	// BadRequest counts a request answered 4xx, or a connection closed over
	// MaxConns, by reason (a Reason constant).
	BadRequest(reason string)
	// StoreError counts a guard call that failed or timed out.
	StoreError()
}

// Verdicts passed to Metrics.Request.
const (
	VerdictAllow  = "allow"  // allow: status 0
	VerdictTarpit = "tarpit" // allow: status > 0
	VerdictRefuse = "refuse" // allow: status -1, refused by the guard
	// VerdictSecondFactor: after-auth allow, status -1, a TOTP user's
	// device is not approved.
	VerdictSecondFactor = "second-factor"
	VerdictFailOpen     = "fail-open"   // allow: guard error or timeout, status 0
	VerdictFailClosed   = "fail-closed" // allow: guard error or timeout, status -1
	VerdictFailure      = "failure"     // report: a failed login, counted
	VerdictSuccess      = "success"     // report: a successful login
	VerdictIgnored      = "ignored"     // report: refused by us, or not a guessing failure
	VerdictError        = "error"       // report: guard error or timeout, not counted
	VerdictGone         = "gone"        // Dovecot hung up before the guard answered
)

// Reasons passed to Metrics.BadRequest.
const (
	ReasonMethod       = "method"       // 405: not POST
	ReasonUnauthorized = "unauthorized" // 401: API header missing or wrong
	ReasonCommand      = "command"      // 400: not allow or report
	ReasonTooLarge     = "too-large"    // 413: body over MaxBody
	ReasonJSON         = "json"         // 400: not a JSON object of Dovecot's types
	ReasonNoRemote     = "no-remote"    // 400: no remote attribute
	ReasonBadRemote    = "bad-remote"   // 400: remote is not an IP address
	// ReasonTooManyConns: a connection closed at MaxConns, the longest-idle
	// one to make room for a new one, or the new one when none is idle.
	ReasonTooManyConns = "too-many-conns"
)

// Defaults used for zero fields of Server; mailguard's config takes its
// defaults for dovecot.reject_msg, dovecot.max_conns, dovecot.timeout
// (ReadTimeout) and store.timeout from here. DefaultMaxConns: Dovecot's auth
// policy client keeps at most 100 connections per auth process
// (max_parallel_connections in auth-policy.c), one auth process per server;
// 1000 leaves room for several Dovecot servers or proxies on one mailguard.
// DefaultReadTimeout: Dovecot sends a request at once and gives up after 2s.
const (
	DefaultRejectMsg = "Too many failed logins from your network. Try again later or contact your mail administrator."
	// DefaultSecondFactorMsg is SecondFactorMsg's default; the daemon
	// always sets it from totp.reject_msg, which names the page.
	DefaultSecondFactorMsg = "This device is not approved for this account: approve it with your one-time code on the approval page."
	DefaultRejectUserMsg   = "Too many failed logins to this account. Try again later from a device you used before, or contact your mail administrator."
	DefaultTempFailMsg     = "Temporary authentication failure, try again later"
	DefaultTimeout         = 500 * time.Millisecond // Dovecot waits 2s (auth_policy_server_timeout_msecs); = policyd.DefaultTimeout (store.timeout)
	DefaultMaxBody         = 16 << 10
	DefaultMaxConns        = 1000
	DefaultMaxConcurrent   = 64
	DefaultReadTimeout     = 5 * time.Second
	DefaultIdleTimeout     = 2 * time.Minute
	DefaultSessionTTL      = 2 * time.Minute
	DefaultMaxSessions     = 100_000
)

// Server answers Dovecot's auth policy requests. It is an http.Handler (for
// any path: the command is in the query) and can serve its own listeners.
// Set the fields before the first request and do not change them
// afterwards; zero fields take the defaults above, and Server never writes
// to them. Server is safe for concurrent use.
//
// Serve bounds connections by MaxConns. At the bound, a new connection
// closes the one that has waited longest for a request (first those that
// never sent one, then those idle between requests): idle connections,
// however many, cannot lock Dovecot out, and Dovecot reconnects by itself.
// Only when every connection is busy with a request is the new one closed.
//
// Log lines a client can cause (401s, bad requests, store errors, refusals)
// are rate-limited per cause, and refusals per banned subject, with the
// number of lines held back.
type Server struct {
	Guard Guard
	// APIHeader is Dovecot's auth_policy_server_api_header, verbatim:
	// "Name: value" (e.g. "Authorization: Bearer KEY"), or a bare value sent
	// as "X-API-Key: value". Requests without it get 401. Empty: no check.
	APIHeader string
	// RejectMsg is shown to refused clients (IMAP "NO [ALERT] msg", POP3
	// "-ERR [AUTH] msg", SMTP "535 5.7.8 Error: authentication failed: msg").
	// Zero: DefaultRejectMsg.
	RejectMsg string
	// RejectUserMsg is shown instead when the refusal is about the user's
	// account (CheckResult.ByUser): a ban keyed by user refuses it from
	// every network but the user's known devices. Zero: DefaultRejectUserMsg.
	RejectUserMsg string
	// ReplyRef appends CheckResult.Ref to the refusal msg: "... (ref ID)".
	// False: the reference is only logged.
	ReplyRef bool
	// SecondFactorMsg refuses, after a right password, a user who has
	// enrolled TOTP from a device not approved yet (CheckResult.SecondFactor):
	// it should name the approval page. Zero: DefaultSecondFactorMsg.
	SecondFactorMsg string
	// TempFailMsg refuses logins when the guard fails and FailOpen is false.
	// Zero: DefaultTempFailMsg.
	TempFailMsg string
	// Tarpit delays the before-auth allow of clients with recent failures.
	// The zero value never delays; cmd uses DefaultTarpit.
	Tarpit Tarpit
	// FailOpen allows logins when the guard errs or does not answer within
	// Timeout (store.fail_mode open, mailguard's default); false refuses them
	// with TempFailMsg.
	FailOpen bool
	// Timeout bounds the guard's work per request (up to Timeout/50 more,
	// at least 1ms: requests share deadlines). Zero: DefaultTimeout.
	Timeout time.Duration
	// MaxBody caps the request body in bytes. Zero: DefaultMaxBody.
	MaxBody int64
	// MaxConns caps connections (Serve only; see Server); MaxConcurrent
	// caps guard calls in flight: a request that waits longer than Timeout
	// for a slot is answered per FailOpen. Zero: DefaultMaxConns,
	// DefaultMaxConcurrent.
	MaxConns, MaxConcurrent int
	// ReadTimeout bounds reading a request (the first one of a connection
	// included); IdleTimeout a kept-alive connection between requests (Serve
	// only). Zero: DefaultReadTimeout, DefaultIdleTimeout.
	ReadTimeout, IdleTimeout time.Duration
	// SessionTTL and MaxSessions bound the memory of before-auth allows
	// waiting for their after-auth allow or report: Serve forgets them on a
	// timer. Zero: DefaultSessionTTL, DefaultMaxSessions.
	SessionTTL  time.Duration
	MaxSessions int
	Log         *slog.Logger // nil: slog.Default()
	Metrics     Metrics      // nil: none

	now        func() time.Time // for tests; nil: time.Now
	sweepEvery time.Duration    // for tests; zero: sessionTTL/4

	once sync.Once
	// Resolved from the fields by init.
	rejectMsg, rejectUserMsg, tempFailMsg string
	secondFactorMsg                       string
	timeout                               time.Duration
	maxBody                               int64
	maxConns                              int
	readTimeout, idleTimeout              time.Duration
	hdrName                               string
	hdrValue                              []byte
	sess                                  *sessions
	sem                                   chan struct{}
	log                                   *slog.Logger
	metrics                               Metrics
	ctx                                   context.Context  // canceled by Close: guard calls, janitor
	deadlines                             *deadline.Shared // of guard calls, from ctx
	workers                               *workers         // run guard calls
	cancel                                context.CancelFunc
	logs                                  dedup.Limiter  // warnings, one per cause per dedup.DefaultPeriod
	refusedLog                            dedup.Limiter  // refusals at info, one per banned subject per refusalLogEvery
	busy                                  sync.WaitGroup // requests and guard calls (which may outlive their request)
	janitor                               sync.WaitGroup
	janitorOnce                           sync.Once

	mu      sync.Mutex
	srv     *http.Server
	closed  bool // Close or Shutdown: no more serving
	stopped bool // no more requests or guard calls: busy may be waited for
	conns   *connTable
}

// enter registers a request or a guard call, which Close and Shutdown wait
// for; it returns false once they no longer do.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.busy.Add(1)
	return true
}

// refusalLogEvery is how often one banned subject is logged at info.
const refusalLogEvery = time.Minute

func (s *Server) init() {
	s.once.Do(func() {
		// The messages go into a Dovecot protocol line.
		s.rejectMsg = oneLine(or(s.RejectMsg, DefaultRejectMsg))
		s.rejectUserMsg = oneLine(or(s.RejectUserMsg, DefaultRejectUserMsg))
		s.secondFactorMsg = oneLine(or(s.SecondFactorMsg, DefaultSecondFactorMsg))
		s.tempFailMsg = oneLine(or(s.TempFailMsg, DefaultTempFailMsg))
		s.timeout = listen.OrDefault(s.Timeout, DefaultTimeout)
		s.maxBody = listen.OrDefault(s.MaxBody, DefaultMaxBody)
		s.maxConns = listen.OrDefault(s.MaxConns, DefaultMaxConns)
		s.readTimeout = listen.OrDefault(s.ReadTimeout, DefaultReadTimeout)
		s.idleTimeout = listen.OrDefault(s.IdleTimeout, DefaultIdleTimeout)
		ttl := listen.OrDefault(s.SessionTTL, DefaultSessionTTL)
		s.sess = newSessions(ttl, listen.OrDefault(s.MaxSessions, DefaultMaxSessions))
		if s.sweepEvery <= 0 {
			s.sweepEvery = ttl / 4
		}
		s.sem = make(chan struct{}, listen.OrDefault(s.MaxConcurrent, DefaultMaxConcurrent))
		s.log = s.Log
		if s.log == nil {
			s.log = slog.Default()
		}
		s.metrics = s.Metrics
		if s.metrics == nil {
			s.metrics = noMetrics{}
		}
		if s.now == nil {
			s.now = time.Now
		}
		s.hdrName, s.hdrValue = parseAPIHeader(s.APIHeader)
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.deadlines = deadline.New(s.ctx, s.timeout)
		s.workers = &workers{ctx: s.ctx, max: cap(s.sem)}
	})
}

type noMetrics struct{}

func (noMetrics) Request(string, time.Duration) {}
func (noMetrics) BadRequest(string)             {}
func (noMetrics) StoreError()                   {}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// warn logs a warning at most once per dedup.DefaultPeriod for its cause,
// with the number of warnings of that cause held back.
func (s *Server) warn(cause, msg string, args ...any) {
	if ok, n := s.logs.Allow(cause, s.now()); ok {
		s.log.Warn(msg, append(args, "suppressed", n)...)
	}
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

// Serve answers requests on l until Close or Shutdown, then returns nil.
// It closes l. It may be called for several listeners.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if s.Guard == nil {
		l.Close()
		return errors.New("authhook: Server.Guard is nil")
	}
	srv, conns := s.httpServer()
	if srv == nil {
		l.Close()
		return nil // closed
	}
	s.janitorOnce.Do(func() {
		s.janitor.Add(1)
		go s.sweep()
	})
	err := srv.Serve(&limitListener{Listener: l, t: conns})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("authhook: %w", err)
}

// sweep forgets expired sessions every sweepEvery until Close or Shutdown,
// so that an attempt never reported costs memory for SessionTTL at most,
// whether or not more requests come.
func (s *Server) sweep() {
	defer s.janitor.Done()
	t := time.NewTicker(s.sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.sess.sweep(s.now())
		case <-s.ctx.Done():
			return
		}
	}
}

// httpServer returns the http.Server and its connection table, made on
// first use; nil after Close or Shutdown.
func (s *Server) httpServer() (*http.Server, *connTable) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil
	}
	if s.srv == nil {
		s.conns = newConnTable(s)
		s.srv = &http.Server{
			Handler:           s,
			ReadHeaderTimeout: s.readTimeout,
			ReadTimeout:       s.readTimeout,
			// The reply is written at most Timeout after the body is read.
			WriteTimeout:   s.readTimeout + s.timeout,
			IdleTimeout:    s.idleTimeout,
			MaxHeaderBytes: maxHeaderBytes,
			ConnState:      s.conns.state,
			BaseContext:    func(net.Listener) context.Context { return s.ctx },
			ErrorLog:       log.New(httpLog{s}, "", 0),
		}
	}
	return s.srv, s.conns
}

// maxHeaderBytes bounds a request's header (Dovecot sends about 200 bytes).
const maxHeaderBytes = 16 << 10

// httpLog sends net/http's own lines (accept errors, broken requests) to the
// log, rate-limited: a client can cause them.
type httpLog struct{ s *Server }

func (h httpLog) Write(p []byte) (int, error) {
	h.s.warn("http", "authhook: http server", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

// Close closes the listeners and connections at once, cancels guard calls
// and waits for them, for requests and for every goroutine of the server;
// Serve returns. Requests after Close get 503.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	s.closed, s.stopped = true, true
	srv := s.srv
	s.mu.Unlock()
	var err error
	if srv != nil {
		err = srv.Close()
	}
	s.cancel()
	s.busy.Wait()
	s.janitor.Wait()
	s.workers.wait()
	return err
}

// Shutdown stops accepting, closes idle connections, lets requests in
// flight finish and waits for them and for every goroutine of the server.
// If ctx ends first it calls Close and returns ctx's error; Serve returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.closed = true
	srv, conns := s.srv, s.conns
	s.mu.Unlock()
	if srv != nil {
		// net/http waits up to 5 s for a connection that has sent nothing:
		// such a connection has no request in flight to finish.
		conns.closeFresh()
		if err := srv.Shutdown(ctx); err != nil {
			s.Close()
			return err
		}
	}
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.busy.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
	s.cancel()
	s.janitor.Wait()
	s.workers.wait()
	return nil
}

// connTable tracks Serve's connections for MaxConns: those waiting for
// their first request (fresh) and those idle between requests, each in the
// order they started waiting, so that the longest-waiting one can be closed
// to make room.
type connTable struct {
	s           *Server
	mu          sync.Mutex
	conns       map[net.Conn]*tracked
	fresh, idle *list.List // of net.Conn
	closing     bool       // Shutdown: admit nothing more
}

type tracked struct {
	elem *list.Element // in fresh or idle while waiting for a request
	list *list.List
}

func newConnTable(s *Server) *connTable {
	return &connTable{s: s, conns: make(map[net.Conn]*tracked), fresh: list.New(), idle: list.New()}
}

// closeFresh closes the connections that have not sent a request, and
// every one admitted from now on.
func (t *connTable) closeFresh() {
	t.mu.Lock()
	t.closing = true
	var fresh []net.Conn
	for e := t.fresh.Front(); e != nil; e = e.Next() {
		fresh = append(fresh, e.Value.(net.Conn))
	}
	for _, c := range fresh {
		t.forget(c)
	}
	t.mu.Unlock()
	for _, c := range fresh {
		c.Close()
	}
}

// admit gives c a slot, closing the longest-waiting connection at MaxConns.
// It returns false (and closes c) when every connection is busy.
func (t *connTable) admit(c net.Conn) bool {
	t.mu.Lock()
	if t.closing {
		t.mu.Unlock()
		c.Close()
		return false
	}
	var victim net.Conn
	if len(t.conns) >= t.s.maxConns {
		for _, l := range []*list.List{t.fresh, t.idle} {
			if e := l.Front(); e != nil {
				victim = e.Value.(net.Conn)
				break
			}
		}
		if victim == nil {
			t.mu.Unlock()
			c.Close()
			t.s.metrics.BadRequest(ReasonTooManyConns)
			t.s.warn("full", "authhook: too many connections, all busy: closing the new one",
				"limit", t.s.maxConns, "peer", c.RemoteAddr())
			return false
		}
		t.forget(victim)
	}
	t.conns[c] = &tracked{elem: t.fresh.PushBack(c), list: t.fresh}
	t.mu.Unlock()
	if victim != nil {
		victim.Close()
		t.s.metrics.BadRequest(ReasonTooManyConns)
		t.s.warn("evict", "authhook: too many connections: closed the longest-idle one",
			"limit", t.s.maxConns, "peer", victim.RemoteAddr())
	}
	return true
}

// state follows net/http's view of each connection (http.Server.ConnState).
func (t *connTable) state(c net.Conn, st http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tr, ok := t.conns[c]
	if !ok {
		return // closed to make room
	}
	switch st {
	case http.StateActive:
		t.unlist(tr)
	case http.StateIdle:
		t.unlist(tr)
		tr.elem, tr.list = t.idle.PushBack(c), t.idle
	case http.StateHijacked, http.StateClosed:
		t.forget(c)
	}
}

func (t *connTable) unlist(tr *tracked) {
	if tr.elem != nil {
		tr.list.Remove(tr.elem)
		tr.elem, tr.list = nil, nil
	}
}

// forget drops c from the table. t.mu must be held.
func (t *connTable) forget(c net.Conn) {
	if tr, ok := t.conns[c]; ok {
		t.unlist(tr)
		delete(t.conns, c)
	}
}

// activeLen is the number of connections working on a request.
func (t *connTable) activeLen() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns) - t.fresh.Len() - t.idle.Len()
}

func (t *connTable) idleLen() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.idle.Len()
}

// limitListener admits each accepted connection into its table.
type limitListener struct {
	net.Listener
	t *connTable
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.t.admit(c) {
			return c, nil
		}
	}
}
