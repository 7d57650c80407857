package authhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"
)

// Reply is the JSON answer to a well-formed request.
type Reply struct {
	Status int    `json:"status"` // <0 refuse, 0 allow, >0 delay that many seconds
	Msg    string `json:"msg"`
}

var replyOK = []byte(`{"status":0,"msg":""}` + "\n")

// ServeHTTP answers one auth policy request. The contract:
//
//   - POST only (405), the API header when set (401), command allow or
//     report (400), a body of at most MaxBody bytes (413) holding a JSON
//     object (400) whose remote is an IP address (400). Those answers carry
//     {"error": "..."}; Dovecot treats them as "allow".
//   - allow: {"status":-1,"msg":RejectMsg} when the guard refuses the client
//     (RejectUserMsg when the refusal is about the user's account); in the
//     before-auth allow, {"status":N} to delay N seconds per Tarpit (aware
//     of the protocol); else {"status":0}. The after-auth allow (the second allow of a
//     login attempt, see sessions) never delays but does refuse; a Guard
//     that is an AfterAuthGuard is asked CheckAfterAuth there, and its
//     SecondFactor answers {"status":-1,"msg":SecondFactorMsg}.
//   - report: success counts a success; a failure counts as one unless we
//     refused it (policy_reject) or Dovecot 2.4's fail_type says it was no
//     guess (see Request.Counts); the answer is {"status":0,"msg":""}.
//   - A 4xx answer closes the connection: it is not Dovecot's, and keeps no
//     slot of MaxConns.
//   - When the guard errs or takes longer than Timeout, allow answers
//     {"status":0} if FailOpen, else {"status":-1,"msg":TempFailMsg}.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.init()
	if !s.enter() {
		w.Header().Set("Connection", "close")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "server closed"})
		return
	}
	defer s.busy.Done()
	start := time.Now()
	cmd := commandOf(r.URL.RawQuery)
	bad := func(code int, reason, msg string) {
		s.metrics.BadRequest(reason)
		s.log.Debug("bad request", "status", code, "error", msg, "peer", r.RemoteAddr)
		// Not Dovecot: the connection does not keep a slot.
		w.Header().Set("Connection", "close")
		writeJSON(w, code, map[string]string{"error": msg})
	}

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		bad(http.StatusMethodNotAllowed, ReasonMethod, "method not allowed: POST only")
		return
	}
	if !s.authorized(r) {
		s.warn(ReasonUnauthorized, "auth policy request without the right API header", "peer", r.RemoteAddr, "header", s.hdrName)
		bad(http.StatusUnauthorized, ReasonUnauthorized, "missing or wrong API header")
		return
	}
	if cmd != CommandAllow && cmd != CommandReport {
		bad(http.StatusBadRequest, ReasonCommand, fmt.Sprintf("unknown command %q: want allow or report", cmd))
		return
	}
	bp := bodies.Get().(*[]byte)
	defer putBody(bp)
	body, err := readAll(http.MaxBytesReader(w, r.Body, s.maxBody), (*bp)[:0])
	*bp = body // DecodeRequest copies what it keeps
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			bad(http.StatusRequestEntityTooLarge, ReasonTooLarge, fmt.Sprintf("body larger than %d bytes", s.maxBody))
			return
		}
		bad(http.StatusBadRequest, ReasonJSON, "reading body: "+err.Error())
		return
	}
	req, err := DecodeRequest(body)
	if err != nil {
		bad(http.StatusBadRequest, ReasonJSON, err.Error())
		return
	}
	a, err := req.Addr()
	if err != nil {
		if req.Remote == "" {
			bad(http.StatusBadRequest, ReasonNoRemote, err.Error())
		} else {
			bad(http.StatusBadRequest, ReasonBadRemote, err.Error())
		}
		return
	}
	proto := NormalizeProtocol(req.Protocol)

	// The guard calls' deadline is shared with the requests of this slot (a
	// fiftieth of Timeout), and Close cancels it: a context and timer per
	// request, registered with the request's and the server's contexts,
	// cost more than the embedded store's work.
	ctx := &callCtx{Context: s.deadlines.Context(start), gone: r.Context().Done()}
	var rep Reply
	var verdict string
	if cmd == CommandAllow {
		rep, verdict = s.allow(ctx, &req, a, proto)
	} else {
		verdict = s.report(ctx, &req, a, proto)
	}
	s.metrics.Request(verdict, time.Since(start))
	if rep == (Reply{}) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(replyOK)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (s *Server) allow(ctx context.Context, req *Request, a netip.Addr, proto string) (Reply, string) {
	after := s.sess.allow(sessionKey(req), s.now())
	stage := "before-auth"
	if after {
		stage = "after-auth"
	}
	v, err := call(ctx, s, func(ctx context.Context) (CheckResult, error) {
		if ag, ok := s.Guard.(AfterAuthGuard); ok && after {
			return ag.CheckAfterAuth(ctx, a, req.Login, proto)
		}
		if pg, ok := s.Guard.(ProtocolGuard); ok {
			return pg.CheckProtocol(ctx, a, req.Login, proto)
		}
		return s.Guard.Check(ctx, a, req.Login)
	})
	if err != nil && s.clientGone(ctx, stage, a, err) {
		return Reply{}, VerdictGone
	}
	if err != nil {
		s.metrics.StoreError()
		if s.FailOpen {
			s.warn("check", "guard check failed, allowing (fail open)", "stage", stage, "remote", a, "protocol", proto, "err", err)
			return Reply{}, VerdictFailOpen
		}
		s.warn("check", "guard check failed, refusing (fail closed)", "stage", stage, "remote", a, "protocol", proto, "err", err)
		return Reply{Status: -1, Msg: s.tempFailMsg}, VerdictFailClosed
	}
	if v.Refused {
		key := v.Banned
		if key == "" {
			key = "refused" // a Guard that does not name its bans: one line for all
		}
		if ok, n := s.refusedLog.AllowEvery(key, s.now(), refusalLogEvery); ok {
			s.log.Info("refused", "key", v.Banned, "stage", stage, "remote", a, "protocol", proto, "by_user", v.ByUser, "ref", v.Ref, "suppressed", n)
		} else {
			if s.debug() {
				s.log.Debug("refused", "key", v.Banned, "stage", stage, "remote", a, "protocol", proto, "by_user", v.ByUser, "ref", v.Ref)
			}
		}
		msg := s.rejectMsg
		if v.ByUser {
			msg = s.rejectUserMsg
		}
		if s.ReplyRef && v.Ref != "" {
			msg += " (ref " + v.Ref + ")"
		}
		return Reply{Status: -1, Msg: msg}, VerdictRefuse
	}
	if v.SecondFactor && after {
		if s.debug() {
			s.log.Debug("second factor required", "stage", stage, "request", *req)
		}
		return Reply{Status: -1, Msg: s.secondFactorMsg}, VerdictSecondFactor
	}
	if !after {
		if n := s.Tarpit.status(v.Failures, v.UserFailures, proto); n > 0 {
			if s.debug() {
				s.log.Debug("tarpit", "remote", a, "protocol", proto, "count", v.Failures, "user_count", v.UserFailures, "delay", n)
			}
			return Reply{Status: n}, VerdictTarpit
		}
	}
	if s.debug() {
		s.log.Debug("allow", "stage", stage, "request", *req, "count", v.Failures, "user_count", v.UserFailures)
	}
	return Reply{}, VerdictAllow
}

func (s *Server) report(ctx context.Context, req *Request, a netip.Addr, proto string) string {
	s.sess.done(sessionKey(req), s.now())
	if s.debug() {
		s.log.Debug("report", "request", *req)
	}
	var f func(context.Context) error
	var cause string
	switch {
	case req.Success:
		cause = "succeed"
		f = func(ctx context.Context) error { return s.Guard.Succeed(ctx, a, req.Login) }
	case req.Counts():
		if !req.KnownFailType() {
			s.warn("fail_type", "unknown fail_type in a report: counted as a failed login",
				"fail_type", req.FailType, "remote", a, "protocol", proto)
		}
		cause = "fail"
		pwhash := boundHash(req.PasswordHash)
		f = func(ctx context.Context) error { return s.Guard.Fail(ctx, a, req.Login, proto, pwhash) }
	default:
		return VerdictIgnored
	}
	_, err := call(ctx, s, func(ctx context.Context) (struct{}, error) { return struct{}{}, f(ctx) })
	if err != nil && s.clientGone(ctx, "report", a, err) {
		return VerdictGone
	}
	if err != nil {
		s.metrics.StoreError()
		what := "guard: recording a success"
		if cause == "fail" {
			what = "guard: recording a failure"
		}
		s.warn(cause, what, "remote", a, "protocol", proto, "err", err)
		return VerdictError
	}
	if cause == "fail" {
		return VerdictFailure
	}
	return VerdictSuccess
}

// maxHashLen is the longest pwhash kept as it is: Dovecot sends the hex of
// at most a SHA-512 (128 digits), truncated to 12 bits (4 digits) by default.
const maxHashLen = 128

// boundHash keeps what a client sends as pwhash from costing the store more
// than a real one: a longer value becomes the hex of its SHA-256.
func boundHash(h string) string {
	if len(h) <= maxHashLen {
		return h
	}
	sum := sha256.Sum256([]byte(h))
	return hex.EncodeToString(sum[:])
}

// callCtx is the context of a request's guard calls: the shared deadline
// (Close cancels it too), and Err says context.Canceled once Dovecot hung
// up. call gives the guard the shared context alone and stops waiting when
// Dovecot hangs up.
type callCtx struct {
	context.Context
	gone <-chan struct{} // the HTTP request's Done
}

func (c *callCtx) Err() error {
	select {
	case <-c.gone:
		return context.Canceled
	default:
		return c.Context.Err()
	}
}

// call runs f with ctx in a worker goroutine holding one of MaxConcurrent slots, and
// returns when f does or ctx is done, whichever is first: a guard that
// ignores ctx delays its own slot, not Dovecot. A panic in f is an error.
func call[T any](ctx context.Context, s *Server, f func(context.Context) (T, error)) (T, error) {
	var zero T
	if s.Guard == nil {
		return zero, errors.New("authhook: no guard")
	}
	var gone <-chan struct{} // nil: never
	if c, ok := ctx.(*callCtx); ok {
		ctx, gone = c.Context, c.gone
	}
	select {
	case <-gone:
		return zero, fmt.Errorf("authhook: waiting for a guard slot: %w", context.Canceled)
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return zero, fmt.Errorf("authhook: all %d guard slots busy: %w", cap(s.sem), ctx.Err())
	}
	if !s.enter() {
		<-s.sem
		return zero, errors.New("authhook: server closed")
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	s.workers.run(func() {
		defer s.busy.Done()
		defer func() { <-s.sem }()
		defer func() {
			if p := recover(); p != nil {
				ch <- result{err: fmt.Errorf("authhook: guard panicked: %v", p)}
			}
		}()
		v, err := f(ctx)
		ch <- result{v, err}
	})
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return zero, fmt.Errorf("authhook: guard did not answer: %w", ctx.Err())
	case <-gone:
		return zero, fmt.Errorf("authhook: guard did not answer: %w", context.Canceled)
	}
}

// clientGone reports whether a guard call failed because Dovecot hung up
// (its request context was cancelled, not timed out): that is no store
// error, and nobody is waiting for the answer.
func (s *Server) clientGone(ctx context.Context, stage string, a netip.Addr, err error) bool {
	if !errors.Is(ctx.Err(), context.Canceled) {
		return false
	}
	s.log.Debug("client went away", "stage", stage, "remote", a, "err", err)
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(`{"error":"internal error"}`) // cannot happen: v is a Reply or map[string]string
		code = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// debug reports whether debug lines are logged: the per-request ones are
// built only then, since boxing their arguments allocates.
func (s *Server) debug() bool { return s.log.Enabled(context.Background(), slog.LevelDebug) }

// commandOf returns the command of a query string, as
// url.ParseQuery(raw).Get("command") does, without parsing what Dovecot
// always sends.
func commandOf(raw string) Command {
	switch raw {
	case "command=allow":
		return CommandAllow
	case "command=report":
		return CommandReport
	}
	q, _ := url.ParseQuery(raw)
	return Command(q.Get("command"))
}

// bodies holds read buffers for request bodies: reading a body into a new
// buffer was one or two allocations per request.
var bodies = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// maxPooledBody bounds the buffers kept in bodies.
const maxPooledBody = 16 << 10

func putBody(bp *[]byte) {
	if cap(*bp) <= maxPooledBody {
		*bp = (*bp)[:0]
		bodies.Put(bp)
	}
}

// readAll is io.ReadAll appending to b.
func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}
