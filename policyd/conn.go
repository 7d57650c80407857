package policyd

import (
	"bufio"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// conn is the state of one Postfix connection, owned by its goroutine
// except for the fields guarded by s.mu.
type conn struct {
	s      *Server
	c      net.Conn
	remote string

	// The connection's guard worker, started at its first request: jobs
	// takes calls, results gives their outcomes. abandoned is set when a
	// call outlived Timeout; its outcome, when it comes, is dropped.
	jobs      chan job
	results   chan outcome
	abandoned bool

	// Reused from request to request: reading space, the request, the reply.
	sc  scratch
	req Request
	out []byte
	// The read and write deadlines as last set (see serveConn).
	readBy, writeBy time.Time

	// Guarded by s.mu.
	waiting *list.Element // in s.fresh or s.idle while waiting for a request
	served  bool          // has been answered at least once
	dropped bool          // lost its slot (evicted, Shutdown, Close): stop
}

func (s *Server) serveConn(cn *conn) {
	c := cn.c
	defer func() {
		if cn.jobs != nil {
			close(cn.jobs) // the worker ends once its call, if any, returns
		}
		s.mu.Lock()
		cn.unlist()
		delete(s.conns, cn)
		s.mu.Unlock()
		c.Close()
		s.wg.Done()
	}()
	br := bufio.NewReader(c)
	for {
		// One deadline for the whole request: a peer that dribbles bytes
		// cannot keep a connection longer than an idle one. The first
		// request has a shorter one: Postfix sends it at once. A deadline
		// is moved only when it would move by more than a tenth of its
		// timeout (at most a second), or come earlier: setting one costs
		// two runtime timer updates, a few per cent of a request.
		first := !cn.served
		now := time.Now()
		if first {
			cn.readBy = now.Add(s.firstTimeout)
			c.SetReadDeadline(cn.readBy)
		} else if by := now.Add(s.idleTimeout); moves(cn.readBy, by, s.idleTimeout) {
			cn.readBy = by
			c.SetReadDeadline(by)
		}
		if !cn.wait() {
			return
		}
		err := cn.sc.read(br, s.limits, &cn.req)
		if !cn.work() {
			return // closed under us: to make room, or by Shutdown or Close
		}
		if err != nil {
			cn.readFailed(err, first)
			return
		}
		start := time.Now()
		action, verdict := cn.decide(&cn.req)
		s.metrics.Request(verdict, time.Since(start))
		if by := time.Now().Add(writeTimeout); moves(cn.writeBy, by, writeTimeout) {
			cn.writeBy = by
			c.SetWriteDeadline(by)
		}
		if err := cn.reply(action); err != nil {
			if !s.isShutdown() {
				s.log.Debug("policyd: writing reply", "remote", cn.remote, "err", err)
			}
			return
		}
		if first {
			s.mu.Lock()
			cn.served = true
			s.mu.Unlock()
		}
	}
}

// moves reports whether a deadline set at last should be moved to by, for
// a timeout of d: when by comes earlier, or later by more than a tenth of d
// (at most a second), the slack a deadline may lag behind.
func moves(last, by time.Time, d time.Duration) bool {
	return by.Before(last) || by.Sub(last) > min(d/10, time.Second)
}

// reply writes the reply, as WriteReply does, from the connection's buffer.
func (cn *conn) reply(action string) error {
	b, err := appendReply(cn.out[:0], action)
	if err != nil {
		return err
	}
	cn.out = b
	_, err = cn.c.Write(b)
	return err
}

// wait puts cn at the back of the waiting connections (those that may be
// closed to make room). It returns false if cn is to stop.
func (cn *conn) wait() bool {
	s := cn.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if cn.dropped || s.shutdown {
		return false
	}
	if cn.waiting != nil {
		return true // listed by admit
	}
	l := s.fresh
	if cn.served {
		l = s.idle
	}
	cn.waiting = l.PushBack(cn)
	return true
}

// work takes cn off the waiting connections once a request (or an error) is
// read. It returns false if cn lost its slot meanwhile.
func (cn *conn) work() bool {
	s := cn.s
	s.mu.Lock()
	defer s.mu.Unlock()
	cn.unlist()
	return !cn.dropped
}

// unlist takes cn off its waiting list, if on one. s.mu must be held.
func (cn *conn) unlist() {
	if cn.waiting == nil {
		return
	}
	l := cn.s.fresh
	if cn.served {
		l = cn.s.idle
	}
	l.Remove(cn.waiting)
	cn.waiting = nil
}

func (cn *conn) readFailed(err error, first bool) {
	s := cn.s
	switch {
	case err == io.EOF:
		s.log.Debug("policyd: connection closed by peer", "remote", cn.remote)
	case errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, ErrTruncated):
		if first {
			// Nothing sent since connecting: not Postfix.
			s.metrics.BadRequest(ReasonNoRequest)
			s.warn("bad:"+ReasonNoRequest, "policyd: no request within the first-request timeout, connection closed",
				"remote", cn.remote, "timeout", s.firstTimeout)
			return
		}
		s.log.Debug("policyd: idle connection closed", "remote", cn.remote)
	case !isProtocolError(err):
		// A reset or other I/O error from the peer is not a bad request.
		s.log.Debug("policyd: connection error", "remote", cn.remote, "err", err)
	default:
		reason := ReasonMalformed
		switch {
		case errors.Is(err, ErrLineTooLong):
			reason = ReasonLineTooLong
		case errors.Is(err, ErrTooManyAttrs):
			reason = ReasonTooManyAttrs
		case errors.Is(err, ErrTooLarge):
			reason = ReasonTooLarge
		case errors.Is(err, ErrTruncated):
			reason = ReasonTruncated
		}
		s.metrics.BadRequest(reason)
		s.warn("bad:"+reason, "policyd: bad request, connection closed", "remote", cn.remote, "err", err)
	}
}

func (cn *conn) decide(req *Request) (action, verdict string) {
	s := cn.s
	log := s.log
	if r := req.Get("request"); r != "smtpd_access_policy" {
		log.Debug("policyd: not an access policy request", "remote", cn.remote, "request", r)
		return ActionDunno, VerdictDunno
	}
	addr, err := netip.ParseAddr(req.Get("client_address"))
	if err != nil {
		log.Debug("policyd: no usable client address", "remote", cn.remote, "client_address", req.Get("client_address"))
		return ActionDunno, VerdictDunno
	}
	user := req.Get("sasl_username")
	state := req.Get("protocol_state")
	rcpt := user != "" && strings.EqualFold(state, "RCPT")
	var key uint64
	if rcpt {
		key = s.fold.key(req)
		if action, verdict, ok := s.fold.repeat(key, time.Now()); ok {
			if s.debug() {
				log.Debug("policyd: same recipient request again, same answer", "client", addr, "action", action)
			}
			return action, verdict
		}
	}

	o := cn.ask(addr, user, rcpt)
	if rcpt && o.err == nil {
		defer func() { s.fold.remember(key, action, verdict, time.Now()) }()
	}
	switch {
	case o.err != nil:
		s.metrics.StoreError()
		mode := "closed"
		action, verdict = s.fail, VerdictFailClosed
		if s.FailOpen {
			mode, action, verdict = "open", ActionDunno, VerdictFailOpen
		}
		s.warn("guard", "policyd: guard unavailable, failing "+mode, "err", o.err)
		return action, verdict
	case o.banned != "":
		if ok, n := s.refusedLog.AllowEvery(o.banned, s.now(), refusalLogEvery); ok {
			log.Info("policyd: refuse", "key", o.banned, "client", addr, "state", state, "ref", o.ref, "suppressed", n)
		} else {
			if s.debug() {
				log.Debug("policyd: refuse", "key", o.banned, "client", addr, "state", state, "ref", o.ref)
			}
		}
		if s.ReplyRef && o.ref != "" {
			return s.reject + " (ref " + o.ref + ")", VerdictReject
		}
		return s.reject, VerdictReject
	case o.over:
		if s.debug() {
			log.Debug("policyd: rate limit", "client", addr, "user", user)
		}
		return s.deferA, VerdictDefer
	}
	if s.debug() { // boxing the arguments costs allocations even when disabled
		log.Debug("policyd: dunno", "client", addr, "user", user, "state", state, "recipient_counted", rcpt)
	}
	return ActionDunno, VerdictDunno
}

type outcome struct {
	banned string // the subject of the ban refusing the client
	ref    string // the refusal's reference (RefGuard), "" if none
	over   bool
	err    error
}

var errBusy = errors.New("policyd: previous guard call on this connection still running")

// job is one request's guard calls, for the connection's worker.
type job struct {
	ctx  context.Context
	a    netip.Addr
	user string
	rcpt bool
}

// ask runs the guard calls for one request in the connection's worker
// goroutine, so that the answer comes within Timeout even from a Guard that
// ignores its context. A call abandoned that way keeps its connection from
// starting another one until it returns (later requests get the fail-mode
// answer at once), which bounds abandoned calls by MaxConns. One worker per
// connection, not a goroutine per request: starting one cost more than the
// embedded store's work.
func (cn *conn) ask(a netip.Addr, user string, rcpt bool) outcome {
	s := cn.s
	if cn.abandoned {
		select {
		case <-cn.results: // the abandoned call returned: its answer is stale
			cn.abandoned = false
		default:
			return outcome{err: errBusy}
		}
	}
	if cn.jobs == nil {
		cn.jobs, cn.results = make(chan job), make(chan outcome, 1)
		s.calls.Add(1)
		go work(s.Guard, cn.jobs, cn.results, &s.calls)
	}
	// The deadline is shared with the requests of this slot (a fiftieth of
	// Timeout): a context and timer of its own per request cost ~10% of the
	// CPU of a request on the embedded store.
	ctx := s.deadlines.Context(time.Now())
	cn.jobs <- job{ctx, a, user, rcpt} // the worker is idle: not abandoned
	select {
	case o := <-cn.results:
		return o
	case <-ctx.Done():
		cn.abandoned = true
		return outcome{err: fmt.Errorf("policyd: guard: %w", ctx.Err())}
	}
}

// work is a connection's guard worker: it runs the jobs it is given, one at
// a time, until jobs is closed.
func work(g Guard, jobs <-chan job, results chan<- outcome, calls *sync.WaitGroup) {
	defer calls.Done()
	for j := range jobs {
		results <- call(j.ctx, g, j.a, j.user, j.rcpt)
	}
}

func call(ctx context.Context, g Guard, a netip.Addr, user string, rcpt bool) (o outcome) {
	defer func() {
		if r := recover(); r != nil {
			o = outcome{err: fmt.Errorf("policyd: guard panicked: %v", r)}
		}
	}()
	var banned, ref string
	var err error
	if rg, ok := g.(RefGuard); ok {
		banned, ref, err = rg.CheckRef(ctx, a, user)
	} else {
		banned, _, err = g.Check(ctx, a, user)
	}
	if err != nil || banned != "" {
		return outcome{banned: banned, ref: ref, err: err}
	}
	if rcpt {
		o.over, o.err = g.Recipient(ctx, a, user)
	}
	return o
}

// isProtocolError reports whether err is the peer breaking the protocol
// (as opposed to the connection failing).
func isProtocolError(err error) bool {
	return errors.Is(err, ErrMalformed) || errors.Is(err, ErrLineTooLong) || errors.Is(err, ErrTooLarge) ||
		errors.Is(err, ErrTooManyAttrs) || errors.Is(err, ErrTruncated)
}

// debug reports whether debug lines are logged: the per-request ones are
// built only then, since boxing their arguments allocates.
func (s *Server) debug() bool { return s.log.Enabled(context.Background(), slog.LevelDebug) }
