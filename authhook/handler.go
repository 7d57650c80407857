package authhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
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
//     of the protocol); else {"status":0}. The after-auth allow (the second
//     allow of a login attempt, see sessions) never delays but does refuse.
//   - report: success counts a success, a failure that is not ours
//     (policy_reject) counts a failure; the answer is {"status":0,"msg":""}.
//   - When the guard errs or takes longer than Timeout, allow answers
//     {"status":0} if FailOpen, else {"status":-1,"msg":TempFailMsg}.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.init()
	start := time.Now()
	cmd := Command(r.URL.Query().Get("command"))
	bad := func(code int, reason, msg string) {
		if m, ok := s.Metrics.(BadRequestCounter); ok {
			m.BadRequest(reason)
		}
		s.log.Debug("bad request", "status", code, "error", msg, "peer", r.RemoteAddr)
		writeJSON(w, code, map[string]string{"error": msg})
	}

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		bad(http.StatusMethodNotAllowed, ReasonMethod, "method not allowed: POST only")
		return
	}
	if !s.authorized(r) {
		s.log.Warn("auth policy request without the right API header", "peer", r.RemoteAddr, "header", s.hdrName)
		bad(http.StatusUnauthorized, ReasonUnauthorized, "missing or wrong API header")
		return
	}
	if cmd != CommandAllow && cmd != CommandReport {
		bad(http.StatusBadRequest, ReasonCommand, fmt.Sprintf("unknown command %q: want allow or report", cmd))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			bad(http.StatusRequestEntityTooLarge, ReasonTooLarge, fmt.Sprintf("body larger than %d bytes", s.MaxBody))
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

	ctx, cancel := context.WithTimeout(r.Context(), s.Timeout)
	defer cancel()
	var rep Reply
	var verdict string
	if cmd == CommandAllow {
		rep, verdict = s.allow(ctx, &req, a, proto)
	} else {
		verdict = s.report(ctx, &req, a, proto)
	}
	if s.Metrics != nil {
		s.Metrics.Request(verdict, time.Since(start))
	}
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
		return s.Guard.Check(ctx, a, req.Login)
	})
	if err != nil && s.clientGone(ctx, stage, a, err) {
		return Reply{}, VerdictGone
	}
	if err != nil {
		s.storeError()
		if s.FailOpen {
			s.log.Warn("guard check failed, allowing (fail open)", "stage", stage, "remote", a, "protocol", proto, "err", err)
			return Reply{}, VerdictFailOpen
		}
		s.log.Warn("guard check failed, refusing (fail closed)", "stage", stage, "remote", a, "protocol", proto, "err", err)
		return Reply{Status: -1, Msg: s.TempFailMsg}, VerdictFailClosed
	}
	if v.Refused {
		if s.refusedLog.First(a.String(), s.now(), refusalLogEvery) {
			s.log.Info("refused", "stage", stage, "remote", a, "protocol", proto, "by_user", v.ByUser)
		} else {
			s.log.Debug("refused", "stage", stage, "remote", a, "protocol", proto, "by_user", v.ByUser)
		}
		if v.ByUser {
			return Reply{Status: -1, Msg: s.RejectUserMsg}, VerdictRefuse
		}
		return Reply{Status: -1, Msg: s.RejectMsg}, VerdictRefuse
	}
	if !after {
		if n := s.Tarpit.status(v.Failures, v.UserFailures, proto); n > 0 {
			s.log.Debug("tarpit", "remote", a, "protocol", proto, "count", v.Failures, "user_count", v.UserFailures, "delay", n)
			return Reply{Status: n}, VerdictTarpit
		}
	}
	s.log.Debug("allow", "stage", stage, "request", *req, "count", v.Failures, "user_count", v.UserFailures)
	return Reply{}, VerdictAllow
}

func (s *Server) report(ctx context.Context, req *Request, a netip.Addr, proto string) string {
	s.sess.done(sessionKey(req), s.now())
	s.log.Debug("report", "request", *req)
	switch {
	case req.Success:
		_, err := call(ctx, s, func(ctx context.Context) (struct{}, error) {
			return struct{}{}, s.Guard.Succeed(ctx, a, req.Login)
		})
		if err != nil && s.clientGone(ctx, "report", a, err) {
			return VerdictGone
		}
		if err != nil {
			s.storeError()
			s.log.Warn("guard: recording a success", "remote", a, "protocol", proto, "err", err)
			return VerdictError
		}
		return VerdictSuccess
	case req.Counts():
		_, err := call(ctx, s, func(ctx context.Context) (struct{}, error) {
			_, err := s.Guard.Fail(ctx, a, req.Login, proto, req.PasswordHash)
			return struct{}{}, err
		})
		if err != nil && s.clientGone(ctx, "report", a, err) {
			return VerdictGone
		}
		if err != nil {
			s.storeError()
			s.log.Warn("guard: recording a failure", "remote", a, "protocol", proto, "err", err)
			return VerdictError
		}
		return VerdictFailure
	}
	return VerdictIgnored
}

// call runs f with ctx in a goroutine holding one of MaxConcurrent slots, and
// returns when f does or ctx is done, whichever is first: a guard that
// ignores ctx delays its own slot, not Dovecot. A panic in f is an error.
func call[T any](ctx context.Context, s *Server, f func(context.Context) (T, error)) (T, error) {
	var zero T
	if s.Guard == nil {
		return zero, errors.New("authhook: no guard")
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return zero, fmt.Errorf("authhook: all %d guard slots busy: %w", cap(s.sem), ctx.Err())
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		defer func() { <-s.sem }()
		defer func() {
			if p := recover(); p != nil {
				ch <- result{err: fmt.Errorf("authhook: guard panicked: %v", p)}
			}
		}()
		v, err := f(ctx)
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		return zero, fmt.Errorf("authhook: guard did not answer: %w", ctx.Err())
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

func (s *Server) storeError() {
	if m, ok := s.Metrics.(StoreErrorCounter); ok {
		m.StoreError()
	}
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
