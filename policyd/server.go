// Package policyd is mailguard's Postfix front end: a server for the SMTPD
// policy delegation protocol that Postfix's check_policy_service speaks
// (Postfix SMTPD_POLICY_README, "Protocol description").
//
// For each request Server asks its Guard whether the SMTP client (and the
// SASL user it logged in as) is refused, and at RCPT time counts the
// recipient of an authenticated sender against its rate limit. It answers
//
//   - RejectAction (421 ..., Postfix disconnects) to a refused client, at any
//     stage Postfix asks;
//   - DeferAction (DEFER_IF_PERMIT 4.7.1 ...) to an authenticated sender over
//     its recipient limit;
//   - DUNNO otherwise, and to requests it cannot use (no valid
//     client_address, a request other than smtpd_access_policy);
//   - when the Guard fails or takes longer than Timeout: DUNNO if FailOpen,
//     else FailAction.
//
// A recipient is counted only for protocol_state=RCPT with a sasl_username,
// and once per RCPT even when Postfix asks twice (a check_policy_service in
// two restriction lists, with smtpd_delay_reject=yes): see fold.
//
// A connection carries any number of requests, one at a time. A request that
// breaks the protocol or the limits closes its connection (Postfix opens a
// new one) and nothing else.
package policyd

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mailguard/mailguard/internal/deadline"
	"github.com/mailguard/mailguard/internal/dedup"
)

// Guard is what Server consumes: mailguard's *guard.Guard implements it.
// Implementations must be safe for concurrent use and return soon after ctx
// is done; Server stops waiting at its Timeout in any case.
type Guard interface {
	// Check tells whether the client at a, logging in as user when user is
	// not empty, is refused: banned names the subject of the ban that
	// refuses it (a prefix, a user), empty when it is not refused. failures
	// is not used by policyd.
	Check(ctx context.Context, a netip.Addr, user string) (banned string, failures int, err error)
	// Recipient counts one recipient sent by user from a; over asks for a
	// deferral.
	Recipient(ctx context.Context, a netip.Addr, user string) (over bool, err error)
}

// RefGuard is a Guard that names each refusal with a reference (an audit
// id, see package audit), found by type assertion: Server puts it in the
// refusal log line ("ref") and, with ReplyRef, at the end of the reply text
// ("(ref ID)"), so that a user's complaint leads to the decision.
type RefGuard interface {
	CheckRef(ctx context.Context, a netip.Addr, user string) (banned, ref string, err error)
}

// Metrics receives what Server counts. It has the shape of
// authhook.Metrics, so that one type serves both front ends. It must be safe
// for concurrent use.
type Metrics interface {
	// Request is called once per request decided, just before the reply is
	// written, with its verdict (a Verdict constant) and the time from the
	// request read to the decision.
	Request(verdict string, d time.Duration)
	// BadRequest counts a connection closed for a bad request or over
	// MaxConns, by reason (a Reason constant).
	BadRequest(reason string)
	// StoreError counts a request whose guard calls failed or timed out
	// (answered per FailOpen).
	StoreError()
}

// Reasons passed to Metrics.BadRequest.
const (
	ReasonLineTooLong  = "line-too-long"  // ErrLineTooLong
	ReasonTooManyAttrs = "too-many-attrs" // ErrTooManyAttrs
	ReasonTooLarge     = "too-large"      // ErrTooLarge
	ReasonMalformed    = "malformed"      // ErrMalformed
	ReasonTruncated    = "truncated"      // ErrTruncated: EOF or timeout inside a request
	ReasonNoRequest    = "no-request"     // nothing sent within FirstTimeout of connecting
	// ReasonTooManyConns: a connection closed at MaxConns, the longest-idle
	// one to make room for a new one, or the new one when none is idle.
	ReasonTooManyConns = "too-many-conns"
)

// Verdicts as reported to Metrics.
const (
	VerdictDunno      = "dunno"       // nothing against the client
	VerdictReject     = "reject"      // refused client: RejectAction
	VerdictDefer      = "defer"       // over the recipient rate limit: DeferAction
	VerdictFailOpen   = "fail-open"   // guard error or timeout, answered DUNNO
	VerdictFailClosed = "fail-closed" // guard error or timeout, answered FailAction
)

// Defaults for zero Server fields; mailguard's config takes its defaults for
// store.timeout, postfix.idle_timeout and postfix.max_conns from here.
// DefaultTimeout: Postfix must never wait on us, and a Redis store answers
// within a few ms or is in trouble (its read timeout is 300ms). DefaultMaxConns:
// each smtpd process holds one connection to a policy service, and master.cf
// runs up to default_process_limit (100) smtpd per service (smtp, submission,
// smtps): 300 at Postfix's defaults; 1000 leaves room for raised limits.
const (
	DefaultTimeout = 500 * time.Millisecond
	// DefaultIdleTimeout is longer than Postfix's smtpd_policy_service_max_idle
	// (300s), so that Postfix, not us, closes idle connections: Postfix then
	// never writes a request into a connection we are closing.
	DefaultIdleTimeout = 6 * time.Minute
	DefaultMaxConns    = 1000
	DefaultSocketMode  = fs.FileMode(0o660)
)

// DefaultFirstTimeout bounds the wait for the first request of a connection.
// Postfix writes its request as soon as it has connected, and gives up on
// the policy service after its own timeout (timeout=5s in contrib's
// check_policy_service): a connection that has sent nothing by then is not
// Postfix's, and must not hold a slot.
const DefaultFirstTimeout = 5 * time.Second

const (
	writeTimeout    = 10 * time.Second       // a reply that Postfix does not read
	repeatWindow    = time.Second            // see fold
	backoffMax      = 500 * time.Millisecond // after an Accept error
	refusalLogEvery = time.Minute            // one info line per banned subject
)

// ErrServerClosed is returned by Serve after Close or Shutdown.
var ErrServerClosed = errors.New("policyd: server closed")

// Server answers Postfix policy requests. Set its fields before calling Serve
// and do not change them afterwards; a zero field means its default, and
// Server never writes to them. The methods are safe for concurrent use.
//
// Connections are bounded by MaxConns. At the bound, a new connection closes
// the one that has waited longest for a request (first those that never
// sent one, then those idle between requests), so that idle connections,
// however many, cannot lock Postfix out: Postfix reconnects by itself. Only
// when every connection is busy with a request is the new one closed.
//
// Log lines an SMTP client or a local process can cause (bad requests, full
// connection table, guard errors, refusals) are rate-limited per cause, and
// refusals per banned subject, with the number of lines held back.
type Server struct {
	Guard Guard // required

	RejectAction string // refused client; zero: DefaultRejectAction
	DeferAction  string // rate-limited sender; zero: DefaultDeferAction
	FailAction   string // guard failed and !FailOpen; zero: DefaultFailAction
	// FailOpen answers DUNNO when the guard fails or is slower than Timeout
	// (store.fail_mode: open). False answers FailAction.
	FailOpen bool
	// ReplyRef appends a RefGuard's reference to RejectAction's text:
	// "421 4.7.1 ... (ref k3x9q2m7ab)". False: the reference is only logged.
	ReplyRef bool

	Timeout      time.Duration // for the guard calls of one request (up to Timeout/50 more, at least 1ms: requests share deadlines); zero: DefaultTimeout
	IdleTimeout  time.Duration // for reading a whole request; zero: DefaultIdleTimeout
	FirstTimeout time.Duration // for the first request of a connection; zero: DefaultFirstTimeout
	MaxLineLen   int           // zero: DefaultMaxLineLen
	MaxAttrs     int           // zero: DefaultMaxAttrs
	MaxBytes     int           // per request; zero: DefaultMaxBytes
	MaxConns     int           // open connections; zero: DefaultMaxConns

	Log     *slog.Logger // nil: slog.Default()
	Metrics Metrics      // nil: none

	now func() time.Time // of the log rate limits, for tests; nil: time.Now

	mu        sync.Mutex
	inited    bool
	initErr   error
	closed    bool // Close: everything stops now
	shutdown  bool // Shutdown or Close: no new connections or requests
	ctx       context.Context
	cancel    context.CancelFunc // cancels ctx: Close
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{} // the open connections: those holding a slot
	fresh     *list.List         // of *conn waiting for their first request, longest first
	idle      *list.List         // of *conn waiting for a further request, longest first
	wg        sync.WaitGroup     // accept loops and connections
	calls     sync.WaitGroup     // guard calls, which may outlive their request

	// Resolved from the fields by init.
	reject, deferA, fail               string
	timeout, idleTimeout, firstTimeout time.Duration
	maxConns                           int
	limits                             Limits
	log                                *slog.Logger
	metrics                            Metrics
	fold                               *fold
	deadlines                          *deadline.Shared // of the guard calls

	logs       dedup.Limiter // warnings, one per cause per dedup.DefaultPeriod
	refusedLog dedup.Limiter // refusals at info, one per banned subject per refusalLogEvery
}

// init resolves the fields once. s.mu must be held.
func (s *Server) init() error {
	if s.inited {
		return s.initErr
	}
	s.inited = true
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.listeners = make(map[net.Listener]struct{})
	s.conns = make(map[*conn]struct{})
	s.fresh, s.idle = list.New(), list.New()
	s.fold = newFold()
	var errs []error
	action := func(name, v, def string) string {
		if v == "" {
			return def
		}
		if c := cleanAction(v); c != "" {
			return c
		}
		errs = append(errs, fmt.Errorf("policyd: %s %q is empty once control characters are removed", name, v))
		return def
	}
	s.reject = action("RejectAction", s.RejectAction, DefaultRejectAction)
	s.deferA = action("DeferAction", s.DeferAction, DefaultDeferAction)
	s.fail = action("FailAction", s.FailAction, DefaultFailAction)
	s.timeout = or(s.Timeout, DefaultTimeout)
	s.idleTimeout = or(s.IdleTimeout, DefaultIdleTimeout)
	s.firstTimeout = min(or(s.FirstTimeout, DefaultFirstTimeout), s.idleTimeout)
	s.deadlines = deadline.New(s.ctx, s.timeout)
	s.maxConns = or(s.MaxConns, DefaultMaxConns)
	s.limits = Limits{MaxLineLen: s.MaxLineLen, MaxAttrs: s.MaxAttrs, MaxBytes: s.MaxBytes}
	s.log = s.Log
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.metrics = s.Metrics
	if s.metrics == nil {
		s.metrics = noMetrics{}
	}
	if s.Guard == nil {
		errs = append(errs, errors.New("policyd: Server.Guard is nil"))
	}
	if s.maxConns < 0 {
		errs = append(errs, fmt.Errorf("policyd: MaxConns %d is negative", s.MaxConns))
	}
	s.initErr = errors.Join(errs...)
	return s.initErr
}

type noMetrics struct{}

func (noMetrics) Request(string, time.Duration) {}
func (noMetrics) BadRequest(string)             {}
func (noMetrics) StoreError()                   {}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// warn logs a warning at most once per dedup.DefaultPeriod for its cause,
// with the number of warnings of that cause held back.
func (s *Server) warn(cause, msg string, args ...any) {
	if ok, n := s.logs.Allow(cause, s.now()); ok {
		s.log.Warn(msg, append(args, "suppressed", n)...)
	}
}

// Serve accepts connections on l and answers their requests until Close or
// Shutdown is called, then returns ErrServerClosed. It closes l. It returns
// another error if l fails for good or a field is invalid (nil Guard, an
// action made only of control characters). Serve may be called for several
// listeners.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if err := s.init(); err != nil {
		s.mu.Unlock()
		l.Close()
		return err
	}
	if s.shutdown {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isShutdown() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("policyd: accept: %w", err)
			}
			// Out of file descriptors and the like: wait and retry.
			backoff = min(max(2*backoff, 5*time.Millisecond), backoffMax)
			s.warn("accept", "policyd: accept failed, retrying", "err", err)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return ErrServerClosed
			}
			continue
		}
		backoff = 0
		if !s.admit(c) {
			if s.isShutdown() {
				return ErrServerClosed
			}
			continue
		}
	}
}

// admit gives c a slot, closing the longest-idle connection at MaxConns,
// and starts serving it. It returns false if c was closed instead.
func (s *Server) admit(c net.Conn) bool {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		c.Close()
		return false
	}
	if len(s.conns) >= s.maxConns {
		victim := s.longestIdle()
		if victim == nil {
			s.mu.Unlock()
			c.Close()
			s.metrics.BadRequest(ReasonTooManyConns)
			s.warn("full", "policyd: too many connections, all busy: closing the new one",
				"limit", s.maxConns, "remote", remote(c))
			return false
		}
		s.drop(victim)
		served := victim.served
		s.mu.Unlock()
		victim.c.Close()
		s.metrics.BadRequest(ReasonTooManyConns)
		s.warn("evict", "policyd: too many connections: closed the longest-idle one",
			"limit", s.maxConns, "remote", victim.remote, "served", served)
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			c.Close()
			return false
		}
	}
	cn := &conn{s: s, c: c, remote: remote(c)}
	cn.waiting = s.fresh.PushBack(cn) // from now on: the accept order is the eviction order
	s.conns[cn] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.serveConn(cn)
	return true
}

// longestIdle returns the connection to close to make room: the one that
// has waited longest for its first request, else the one idle longest
// between requests, else nil. s.mu must be held.
func (s *Server) longestIdle() *conn {
	for _, l := range []*list.List{s.fresh, s.idle} {
		if e := l.Front(); e != nil {
			return e.Value.(*conn)
		}
	}
	return nil
}

// drop takes cn's slot away: its goroutine ends at its next step without
// answering. The caller closes cn.c. s.mu must be held.
func (s *Server) drop(cn *conn) {
	cn.dropped = true
	cn.unlist()
	delete(s.conns, cn)
}

// Close stops the listeners, closes every connection (a request in progress
// is not answered; Postfix retries it on a new connection), cancels guard
// calls and waits for all goroutines of the server, guard calls included.
// After Close, Serve returns ErrServerClosed.
func (s *Server) Close() error {
	s.mu.Lock()
	s.init()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	errs := s.stopListening()
	var conns []*conn
	for cn := range s.conns {
		s.drop(cn)
		conns = append(conns, cn)
	}
	s.mu.Unlock()
	for _, cn := range conns {
		cn.c.Close()
	}
	// Only now: a guard call cancelled before its connection is closed
	// would have its fail-mode answer written.
	s.cancel()
	s.wg.Wait()
	s.calls.Wait() // no new calls: their connections are gone
	return errors.Join(errs...)
}

// Shutdown stops the listeners, closes the connections that wait for a
// request, lets those working on one answer it and close, and waits for
// them and for every goroutine of the server. If ctx ends first it calls
// Close and returns ctx's error. After Shutdown, Serve returns
// ErrServerClosed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.init()
	errs := s.stopListening()
	var waiting []*conn
	for _, l := range []*list.List{s.fresh, s.idle} {
		for e := l.Front(); e != nil; e = e.Next() {
			waiting = append(waiting, e.Value.(*conn))
		}
	}
	for _, cn := range waiting {
		s.drop(cn)
	}
	s.mu.Unlock()
	for _, cn := range waiting {
		cn.c.Close()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		s.calls.Wait()
		close(done)
	}()
	select {
	case <-done:
		return errors.Join(errs...)
	case <-ctx.Done():
		s.Close()
		<-done
		return ctx.Err()
	}
}

// stopListening marks the server shut down and closes its listeners.
// s.mu must be held.
func (s *Server) stopListening() []error {
	s.shutdown = true
	var errs []error
	for l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errs
}

func (s *Server) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

func remote(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return c.LocalAddr().Network()
}
