package policyd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// conn is the state of one Postfix connection, owned by its goroutine.
type conn struct {
	s      *Server
	c      net.Conn
	remote string

	// running is closed when a guard call abandoned at Timeout returns.
	running chan struct{}
}

func (s *Server) serveConn(c net.Conn) {
	cn := &conn{s: s, c: c, remote: remote(c)}
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
		s.wg.Done()
	}()
	br := bufio.NewReader(c)
	lim := Limits{MaxLineLen: s.MaxLineLen, MaxAttrs: s.MaxAttrs}
	idle := or(s.IdleTimeout, DefaultIdleTimeout)
	for {
		// One deadline for the whole request: a peer that dribbles bytes
		// cannot keep a connection longer than an idle one.
		c.SetReadDeadline(time.Now().Add(idle))
		req, err := ReadRequest(br, lim)
		if err != nil {
			cn.readFailed(err)
			return
		}
		start := time.Now()
		action, verdict := cn.decide(req)
		if s.Metrics != nil {
			s.Metrics.Request(verdict, time.Since(start))
		}
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := WriteReply(c, action); err != nil {
			if !s.isClosed() {
				s.log().Debug("policyd: writing reply", "remote", cn.remote, "err", err)
			}
			return
		}
	}
}

func (cn *conn) readFailed(err error) {
	s := cn.s
	switch {
	case s.isClosed():
	case err == io.EOF:
		s.log().Debug("policyd: connection closed by peer", "remote", cn.remote)
	case errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, ErrTruncated):
		s.log().Debug("policyd: idle connection closed", "remote", cn.remote)
	case !isProtocolError(err):
		// A reset or other I/O error from the peer is not a bad request.
		s.log().Debug("policyd: connection error", "remote", cn.remote, "err", err)
	default:
		reason := ReasonMalformed
		switch {
		case errors.Is(err, ErrLineTooLong):
			reason = ReasonLineTooLong
		case errors.Is(err, ErrTooManyAttrs):
			reason = ReasonTooManyAttrs
		case errors.Is(err, ErrTruncated):
			reason = ReasonTruncated
		}
		s.badRequest(reason)
		if ok, n := s.badLog.ok(logEvery); ok {
			s.log().Warn("policyd: bad request, connection closed", "remote", cn.remote, "err", err, "suppressed", n)
		}
	}
}

func (cn *conn) decide(req *Request) (action, verdict string) {
	s := cn.s
	log := s.log()
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
			log.Debug("policyd: same recipient request again, same answer", "client", addr, "action", action)
			return action, verdict
		}
	}

	o := cn.ask(addr, user, rcpt)
	if rcpt && o.err == nil {
		defer func() { s.fold.remember(key, action, verdict, time.Now()) }()
	}
	switch {
	case o.err != nil:
		if m, ok := s.Metrics.(StoreErrorCounter); ok {
			m.StoreError()
		}
		mode := "closed"
		action, verdict = s.fail, VerdictFailClosed
		if s.FailOpen {
			mode, action, verdict = "open", ActionDunno, VerdictFailOpen
		}
		if ok, n := s.failLog.ok(logEvery); ok {
			log.Warn("policyd: guard unavailable, failing "+mode, "err", o.err, "suppressed", n)
		}
		return action, verdict
	case o.refused:
		if s.refusedLog.First(addr.String(), time.Now(), refusalLogEvery) {
			log.Info("policyd: refuse", "client", addr, "state", state)
		} else {
			log.Debug("policyd: refuse", "client", addr, "state", state)
		}
		return s.reject, VerdictReject
	case o.over:
		log.Debug("policyd: rate limit", "client", addr, "user", user)
		return s.deferA, VerdictDefer
	}
	log.Debug("policyd: dunno", "client", addr, "user", user, "state", state, "recipient_counted", rcpt)
	return ActionDunno, VerdictDunno
}

type outcome struct {
	refused, over bool
	err           error
}

var errBusy = errors.New("policyd: previous guard call on this connection still running")

// ask runs the guard calls for one request in their own goroutine, so that
// the answer comes within Timeout even from a Guard that ignores its context.
// A call abandoned that way keeps its connection from starting another one
// until it returns (later requests get the fail-mode answer at once), which
// bounds abandoned calls by MaxConns.
func (cn *conn) ask(a netip.Addr, user string, rcpt bool) outcome {
	s := cn.s
	if cn.running != nil {
		select {
		case <-cn.running:
			cn.running = nil
		default:
			return outcome{err: errBusy}
		}
	}
	ctx, cancel := context.WithTimeout(s.ctx, or(s.Timeout, DefaultTimeout))
	defer cancel()
	done := make(chan struct{})
	var o outcome // written by the goroutine before close(done)
	s.calls.Add(1)
	go func() {
		defer s.calls.Done()
		defer close(done)
		o = call(ctx, s.Guard, a, user, rcpt)
	}()
	select {
	case <-done:
		return o
	case <-ctx.Done():
		cn.running = done
		return outcome{err: fmt.Errorf("policyd: guard: %w", ctx.Err())}
	}
}

func call(ctx context.Context, g Guard, a netip.Addr, user string, rcpt bool) (o outcome) {
	defer func() {
		if r := recover(); r != nil {
			o = outcome{err: fmt.Errorf("policyd: guard panicked: %v", r)}
		}
	}()
	refused, _, err := g.Check(ctx, a, user)
	if err != nil || refused {
		return outcome{refused: refused, err: err}
	}
	if rcpt {
		o.over, o.err = g.Recipient(ctx, a, user)
	}
	return o
}

// isProtocolError reports whether err is the peer breaking the protocol
// (as opposed to the connection failing).
func isProtocolError(err error) bool {
	return errors.Is(err, ErrMalformed) || errors.Is(err, ErrLineTooLong) ||
		errors.Is(err, ErrTooManyAttrs) || errors.Is(err, ErrTruncated)
}
