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
	"context"
	"errors"
	"fmt"
	"github.com/mailguard/mailguard/internal/dedup"
	"github.com/mailguard/mailguard/internal/listen"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Guard is what Server consumes: mailguard's *guard.Guard implements it.
// Implementations must be safe for concurrent use and return soon after ctx
// is done; Server stops waiting at its Timeout in any case.
type Guard interface {
	// Check tells whether the client at a, logging in as user when user is
	// not empty, is refused. failures is not used by policyd.
	Check(ctx context.Context, a netip.Addr, user string) (refused bool, failures int, err error)
	// Recipient counts one recipient sent by user from a; over asks for a
	// deferral.
	Recipient(ctx context.Context, a netip.Addr, user string) (over bool, err error)
}

// Metrics receives one call per request decided, just before the reply is
// written, with its verdict (one of the Verdict constants) and the time from
// the request read to the decision. It must be safe for concurrent use.
type Metrics interface {
	Request(verdict string, d time.Duration)
}

// BadRequestCounter is an optional ability of Metrics: it counts connections
// closed for a bad request, and connections refused over MaxConns, by reason
// (one of the Reason constants).
type BadRequestCounter interface {
	BadRequest(reason string)
}

// StoreErrorCounter is an optional ability of Metrics: it counts requests
// whose guard calls failed or timed out (answered per FailOpen).
type StoreErrorCounter interface {
	StoreError()
}

// Reasons passed to BadRequestCounter.BadRequest.
const (
	ReasonLineTooLong  = "line-too-long"  // ErrLineTooLong
	ReasonTooManyAttrs = "too-many-attrs" // ErrTooManyAttrs
	ReasonMalformed    = "malformed"      // ErrMalformed
	ReasonTruncated    = "truncated"      // ErrTruncated: EOF or timeout inside a request
	ReasonTooManyConns = "too-many-conns" // a connection over MaxConns, closed at once
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

const (
	writeTimeout = 10 * time.Second       // a reply that Postfix does not read
	logEvery     = 10 * time.Second       // at most one line per kind of trouble
	repeatWindow = time.Second            // see fold
	backoffMax   = 500 * time.Millisecond // after an Accept error
)

// ErrServerClosed is returned by Serve and ListenAndServe after Close.
var ErrServerClosed = errors.New("policyd: server closed")

// Server answers Postfix policy requests. Set its fields before calling Serve
// and do not change them afterwards; a zero field means its default. The
// methods are safe for concurrent use.
type Server struct {
	Guard Guard // required

	RejectAction string // refused client; zero: DefaultRejectAction
	DeferAction  string // rate-limited sender; zero: DefaultDeferAction
	FailAction   string // guard failed and !FailOpen; zero: DefaultFailAction
	// FailOpen answers DUNNO when the guard fails or is slower than Timeout
	// (store.fail_mode: open). False answers FailAction.
	FailOpen bool

	Timeout     time.Duration // for the guard calls of one request; zero: DefaultTimeout
	IdleTimeout time.Duration // for reading a whole request; zero: DefaultIdleTimeout
	MaxLineLen  int           // zero: DefaultMaxLineLen
	MaxAttrs    int           // zero: DefaultMaxAttrs
	// MaxConns bounds open connections; more are accepted and closed at once.
	// Zero: DefaultMaxConns.
	MaxConns int
	// SocketMode is given to a unix socket made by ListenAndServe or Listen.
	// Zero: DefaultSocketMode (0660: Postfix's user must be in its group).
	SocketMode fs.FileMode

	Log     *slog.Logger // nil: slog.Default()
	Metrics Metrics      // nil: none

	mu        sync.Mutex
	inited    bool
	initErr   error
	closed    bool
	ctx       context.Context // canceled by Close
	cancel    context.CancelFunc
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup // accept loops and connections
	calls     sync.WaitGroup // guard calls, which may outlive their request
	reject    string         // cleaned actions
	deferA    string
	fail      string
	fold      *fold

	fullLog, badLog, failLog, acceptLog sometimes
	refusedLog                          dedup.Once // info once per client per refusalLogEvery
}

// refusalLogEvery is how often a refused client is logged at info; its other
// refusals go to debug, so a banned client cannot flood the log.
const refusalLogEvery = time.Minute

// init resolves defaults once. s.mu must be held.
func (s *Server) init() error {
	if s.inited {
		return s.initErr
	}
	s.inited = true
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.listeners = make(map[net.Listener]struct{})
	s.conns = make(map[net.Conn]struct{})
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
	if s.Guard == nil {
		errs = append(errs, errors.New("policyd: Server.Guard is nil"))
	}
	s.initErr = errors.Join(errs...)
	return s.initErr
}

func (s *Server) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Serve accepts connections on l and answers their requests until Close is
// called, then returns ErrServerClosed. It closes l. It returns another error
// if l fails for good or a field is invalid (nil Guard, an action made only of
// control characters). Serve may be called for several listeners.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	if err := s.init(); err != nil {
		s.mu.Unlock()
		l.Close()
		return err
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
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("policyd: accept: %w", err)
			}
			// Out of file descriptors and the like: wait and retry.
			backoff = min(max(2*backoff, 5*time.Millisecond), backoffMax)
			if ok, n := s.acceptLog.ok(logEvery); ok {
				s.log().Warn("policyd: accept failed, retrying", "err", err, "suppressed", n)
			}
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return ErrServerClosed
			}
			continue
		}
		backoff = 0
		s.mu.Lock()
		switch {
		case s.closed:
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		case len(s.conns) >= or(s.MaxConns, DefaultMaxConns):
			s.mu.Unlock()
			c.Close()
			s.badRequest(ReasonTooManyConns)
			if ok, n := s.fullLog.ok(logEvery); ok {
				s.log().Warn("policyd: too many connections, closing new one",
					"limit", or(s.MaxConns, DefaultMaxConns), "remote", remote(c), "suppressed", n)
			}
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// ListenAndServe listens on addr (see Listen) and calls Serve.
func (s *Server) ListenAndServe(addr string) error {
	l, err := Listen(addr, s.SocketMode)
	if err != nil {
		return err
	}
	return s.Serve(l)
}

// Listen listens on addr: "host:port" or "inet:host:port" for TCP, as in
// Postfix's check_policy_service, or "unix:/path" for a unix socket. A stale
// socket left at path by a dead server is removed (a live one, or a file that
// is not a socket, is an error), and the new socket gets mode (zero:
// DefaultSocketMode). Closing the listener removes the socket.
func Listen(addr string, mode fs.FileMode) (net.Listener, error) {
	l, err := listen.Listen(addr, or(mode, DefaultSocketMode), "")
	if err != nil {
		return nil, fmt.Errorf("policyd: %w", err)
	}
	return l, nil
}

// Close stops the listeners, closes every connection (a request in progress
// is not answered; Postfix retries it on a new connection), cancels guard
// calls and waits for all goroutines of the server, guard calls included.
// After Close, Serve returns ErrServerClosed.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.cancel != nil {
		s.cancel()
	}
	var errs []error
	for l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.calls.Wait() // no new calls: their connections are gone
	return errors.Join(errs...)
}

func (s *Server) badRequest(reason string) {
	if m, ok := s.Metrics.(BadRequestCounter); ok {
		m.BadRequest(reason)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func remote(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return c.LocalAddr().Network()
}

// sometimes lets one log line through per period and counts the others.
type sometimes struct {
	mu      sync.Mutex
	last    time.Time
	dropped int
}

func (s *sometimes) ok(every time.Duration) (bool, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if !s.last.IsZero() && now.Sub(s.last) < every {
		s.dropped++
		return false, 0
	}
	n := s.dropped
	s.last, s.dropped = now, 0
	return true, n
}
