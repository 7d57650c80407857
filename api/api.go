// Package api is mailguard's HTTP API for web apps and web servers: nginx's
// auth_request asks GET /v1/check whether a browser is refused; web apps
// (a webmail, an admin panel, SOGo, a custom login) report logins to
// POST /v1/events; remote tools list, place and lift bans at /v1/bans, as
// the admin socket does for the CLI. The contract is the OpenAPI document
// openapi.json, served at /v1/openapi.json.
//
// Every route but the document needs `Authorization: Bearer TOKEN` with the
// route's scope (Tokens): no token or an unknown one is 401, a token
// without the scope 403. Every error is JSON, {"error": "...", "code":
// "..."}. Bodies are capped at MaxBody, connections at MaxConns.
package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/dedup"
	"github.com/mailguard/mailguard/internal/listen"
	"github.com/mailguard/mailguard/store"
)

// Guard is what the API needs from the jail engine.
type Guard interface {
	// CheckFrom is guard's CheckLogin naming the caller for the audit
	// trail: source "api:NAME" (NAME: the check token's), protocol
	// guard.ReportProtocol.
	CheckFrom(ctx context.Context, source, protocol string, a netip.Addr, user string) (guard.Verdict, error)
	Report(ctx context.Context, r guard.Report) (guard.Reported, error)
	Status(ctx context.Context, jail string) ([]guard.JailStatus, error)
	Ban(ctx context.Context, target, jail string, d time.Duration) (store.Ban, error)
	Unban(ctx context.Context, target string) ([]store.Ban, error)
}

// Metrics receives what Server counts (metrics.Frontend has this shape).
// Implementations must be safe for concurrent use.
type Metrics interface {
	Request(verdict string, d time.Duration)
	BadRequest(reason string)
	StoreError()
}

// Verdicts passed to Metrics.Request.
const (
	VerdictAllow      = "allow"       // check: 204
	VerdictRefuse     = "refuse"      // check: 403, refused by the guard
	VerdictFailOpen   = "fail-open"   // check: guard error or timeout, 204
	VerdictFailClosed = "fail-closed" // check: guard error or timeout, 503
	VerdictEvent      = "event"       // events: counted
	VerdictAdmin      = "admin"       // bans: answered
)

// Reasons passed to Metrics.BadRequest.
const (
	ReasonUnauthorized = "unauthorized"   // no or unknown token
	ReasonForbidden    = "forbidden"      // token without the scope
	ReasonInvalid      = "invalid"        // bad parameters or body
	ReasonTooManyConns = "too-many-conns" // closed by the connection cap
)

// Codes of an error reply.
const (
	CodeUnauthorized = "unauthorized"       // 401
	CodeForbidden    = "forbidden"          // 403: the token lacks the scope
	CodeRefused      = "refused"            // 403 from /v1/check: the client is refused
	CodeInvalid      = "invalid"            // 400
	CodeNotFound     = "not_found"          // 404: no such route, jail or ban
	CodeMethod       = "method_not_allowed" // 405
	CodeIgnored      = "ignored"            // 409: the target is inside ignoreip
	CodeTooLarge     = "too_large"          // 413
	CodeMediaType    = "unsupported_media"  // 415
	CodeUnavailable  = "unavailable"        // 503: the store failed or timed out
)

// Defaults for zero fields of Server. nginx without an upstream keepalive
// opens a connection per check; the cap keeps a flood from using up the
// file descriptors the mail front ends need.
const (
	DefaultMaxConns          = 256
	DefaultTimeout           = 500 * time.Millisecond
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultWriteTimeout      = 10 * time.Second
	// MaxBody caps a request body (events, bans): a few hundred bytes do.
	MaxBody = 8 << 10
)

// refusalLogEvery: a refused client is logged at info once per banned
// subject per this long (like the mail front ends).
const refusalLogEvery = time.Minute

// Server is the API. Set the fields, then Serve.
type Server struct {
	Guard  Guard
	Tokens *Tokens
	// TLS, when not nil, serves HTTPS with its certificates.
	TLS *tls.Config
	// FailOpen: when the guard fails or takes over Timeout, /v1/check
	// allows (204); otherwise it answers 503.
	FailOpen bool
	Timeout  time.Duration // guard calls; zero: DefaultTimeout
	// MaxConns caps the open connections (at the cap the one idle longest
	// is closed). Zero: DefaultMaxConns.
	MaxConns int
	// Zero: the Default constants.
	ReadHeaderTimeout, IdleTimeout, WriteTimeout time.Duration
	Log                                          *slog.Logger     // nil: slog.Default()
	Metrics                                      Metrics          // nil: none
	Now                                          func() time.Time // nil: time.Now

	srv        listen.HTTP
	badLog     dedup.Limiter // 401, 403, 400 lines: one per cause per 5 s
	refusedLog dedup.Limiter // refusals, one per banned subject per refusalLogEvery
}

// Serve answers on l until Close or Shutdown, then returns nil. It closes l.
func (s *Server) Serve(l net.Listener) error {
	if s.Guard == nil || s.Tokens == nil {
		l.Close()
		return errors.New("api: Guard and Tokens must be set")
	}
	rh := listen.OrDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	srv, cl := listen.NewServer(l, s.Handler(), listen.Limits{
		MaxConns:          listen.OrDefault(s.MaxConns, DefaultMaxConns),
		ReadHeaderTimeout: rh,
		ReadTimeout:       rh + 5*time.Second,
		IdleTimeout:       listen.OrDefault(s.IdleTimeout, DefaultIdleTimeout),
		WriteTimeout:      listen.OrDefault(s.WriteTimeout, DefaultWriteTimeout),
	}, s.log())
	srv.TLSConfig = s.TLS
	cl.Shed = func(string) { s.metrics().BadRequest(ReasonTooManyConns) }
	if err := s.srv.Serve(srv, cl); err != nil {
		return fmt.Errorf("api: %w", err)
	}
	return nil
}

// Close closes the listener and every connection; Serve returns.
func (s *Server) Close() error { return s.srv.Close() }

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

func (s *Server) metrics() Metrics {
	if s.Metrics == nil {
		return noMetrics{}
	}
	return s.Metrics
}

func (s *Server) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

type noMetrics struct{}

func (noMetrics) Request(string, time.Duration) {}
func (noMetrics) BadRequest(string)             {}
func (noMetrics) StoreError()                   {}

// route is one operation: its method, path, scope ("" for none) and
// handler, which gets the request's token (nil without a scope).
type route struct {
	method, path string
	scope        Scope
	h            func(s *Server, w http.ResponseWriter, r *http.Request, tk *token)
}

// routes is the API; openapi.json documents exactly these (a test holds
// them equal).
var routes = []route{
	{http.MethodGet, "/v1/check", ScopeCheck, (*Server).check},
	{http.MethodPost, "/v1/events", ScopeReport, (*Server).events},
	{http.MethodGet, "/v1/bans", ScopeAdmin, (*Server).listBans},
	{http.MethodPost, "/v1/bans", ScopeAdmin, (*Server).ban},
	{http.MethodDelete, "/v1/bans", ScopeAdmin, (*Server).unban},
	{http.MethodGet, "/v1/openapi.json", "", (*Server).openapi},
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for i := range routes {
		rt := &routes[i]
		if rt.path != r.URL.Path {
			continue
		}
		if rt.method != r.Method && !(rt.method == http.MethodGet && r.Method == http.MethodHead) {
			allow = append(allow, rt.method)
			continue
		}
		var tk *token
		if rt.scope != "" {
			var ok bool
			if tk, ok = s.authorized(w, r, rt.scope); !ok {
				return
			}
		}
		rt.h(s, w, r, tk)
		return
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		s.fail(w, r, http.StatusMethodNotAllowed, CodeMethod, fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, strings.Join(allow, " or ")))
		return
	}
	s.fail(w, r, http.StatusNotFound, CodeNotFound, fmt.Sprintf("no route %s (see /v1/openapi.json)", r.URL.Path))
}

// authorized checks the bearer token and its scope and returns the token,
// or answers 401 or 403. The token never reaches a log or a reply.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request, scope Scope) (*token, bool) {
	h := r.Header.Get("Authorization")
	scheme, presented, _ := strings.Cut(h, " ")
	presented = strings.TrimSpace(presented)
	var why string
	var tk *token
	switch {
	case h == "":
		why = "no Authorization header"
	case !strings.EqualFold(scheme, "Bearer") || presented == "":
		why = "Authorization is not Bearer TOKEN"
	default:
		var ok bool
		if tk, ok = s.Tokens.lookup(presented); !ok {
			why = "unknown token"
		}
	}
	if why != "" {
		s.metrics().BadRequest(ReasonUnauthorized)
		w.Header().Set("WWW-Authenticate", `Bearer realm="mailguard"`)
		s.logBad(r, "unauthorized", why)
		reply(w, http.StatusUnauthorized, errorReply{Error: why + ": send Authorization: Bearer TOKEN (a token of api.tokens_file)", Code: CodeUnauthorized})
		return nil, false
	}
	if !tk.has(scope) {
		s.metrics().BadRequest(ReasonForbidden)
		s.logBad(r, "forbidden", "token "+tk.name+" lacks scope "+string(scope))
		reply(w, http.StatusForbidden, errorReply{Error: fmt.Sprintf("token %s does not have the %s scope", tk.name, scope), Code: CodeForbidden})
		return nil, false
	}
	return tk, true
}

// logBad logs a refused request, at most once per 5 s per cause.
func (s *Server) logBad(r *http.Request, cause, why string) {
	if ok, n := s.badLog.Allow(cause, s.now()); ok {
		s.log().Warn("api: request refused", "reason", cause, "detail", why, "remote", r.RemoteAddr,
			"method", r.Method, "path", r.URL.Path, "suppressed", n)
	}
}

type errorReply struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	// Subject is the banned subject of a refusal (/v1/check).
	Subject string `json:"subject,omitempty"`
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// fail answers a bad request (4xx but 401, 403, which authorized answers).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, code int, kind, msg string) {
	s.metrics().BadRequest(ReasonInvalid)
	s.logBad(r, kind, msg)
	reply(w, code, errorReply{Error: msg, Code: kind})
}

// guardFailed answers an error of the Guard: the caller's mistakes are 4xx;
// anything else is the store failing or timing out, 503.
func (s *Server) guardFailed(w http.ResponseWriter, r *http.Request, op string, err error) {
	switch {
	case errors.Is(err, guard.ErrIgnored):
		s.fail(w, r, http.StatusConflict, CodeIgnored, err.Error())
	case errors.Is(err, guard.ErrNoJail):
		s.fail(w, r, http.StatusNotFound, CodeNotFound, err.Error())
	case errors.Is(err, guard.ErrTarget), errors.Is(err, guard.ErrReport):
		s.fail(w, r, http.StatusBadRequest, CodeInvalid, err.Error())
	default:
		s.metrics().StoreError()
		if ok, n := s.badLog.Allow("store", s.now()); ok {
			s.log().Warn("api: store failed", "op", op, "err", err, "suppressed", n)
		}
		reply(w, http.StatusServiceUnavailable, errorReply{Error: op + ": the store failed or timed out, try again", Code: CodeUnavailable})
	}
}

// parseAddr reads an address parameter: an IPv4 or IPv6 address.
func parseAddr(field, v string) (netip.Addr, error) {
	if v == "" {
		return netip.Addr{}, fmt.Errorf("%s is missing: want an IPv4 or IPv6 address", field)
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IPv4 or IPv6 address", field, clip(v))
	}
	return a, nil
}

// clip shortens attacker text echoed in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// maxUser is the longest login the API takes (guard counts longer ones by a
// digest; this only bounds what a request may carry).
const maxUser = 1024

// check answers GET /v1/check?ip=IP[&user=U]: 204 allowed, 403 refused.
func (s *Server) check(w http.ResponseWriter, r *http.Request, tk *token) {
	start := s.now()
	q := r.URL.Query()
	for k := range q {
		if k != "ip" && k != "user" {
			s.fail(w, r, http.StatusBadRequest, CodeInvalid, fmt.Sprintf("unknown parameter %q (ip, user)", clip(k)))
			return
		}
	}
	if len(q["ip"]) > 1 || len(q["user"]) > 1 {
		s.fail(w, r, http.StatusBadRequest, CodeInvalid, "ip and user may be given once each")
		return
	}
	a, err := parseAddr("ip", q.Get("ip"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, CodeInvalid, err.Error())
		return
	}
	user := q.Get("user")
	if len(user) > maxUser {
		s.fail(w, r, http.StatusBadRequest, CodeInvalid, fmt.Sprintf("user is longer than %d bytes", maxUser))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), listen.OrDefault(s.Timeout, DefaultTimeout))
	v, err := s.Guard.CheckFrom(ctx, tk.source, guard.ReportProtocol, a, user)
	cancel()
	if err != nil {
		s.metrics().StoreError()
		if ok, n := s.badLog.Allow("store", s.now()); ok {
			s.log().Warn("api: store failed", "op", "check", "err", err, "fail_mode", map[bool]string{true: "open", false: "closed"}[s.FailOpen], "suppressed", n)
		}
		if s.FailOpen {
			s.metrics().Request(VerdictFailOpen, s.now().Sub(start))
			w.WriteHeader(http.StatusNoContent)
			return
		}
		s.metrics().Request(VerdictFailClosed, s.now().Sub(start))
		reply(w, http.StatusServiceUnavailable, errorReply{Error: "check: the store failed or timed out, try again", Code: CodeUnavailable})
		return
	}
	if !v.Refused {
		s.metrics().Request(VerdictAllow, s.now().Sub(start))
		w.WriteHeader(http.StatusNoContent)
		return
	}
	s.metrics().Request(VerdictRefuse, s.now().Sub(start))
	if ok, n := s.refusedLog.AllowEvery(v.Banned, s.now(), refusalLogEvery); ok {
		s.log().Info("refused", "key", v.Banned, "remote", a, "by_user", v.ByUser, "uri", clip(r.Header.Get("X-Original-URI")), "suppressed", n)
	} else {
		s.log().Debug("refused", "key", v.Banned, "remote", a)
	}
	reply(w, http.StatusForbidden, errorReply{Error: "refused: too many failed logins", Code: CodeRefused, Subject: v.Banned})
}

// decodeBody reads a JSON body of at most MaxBody bytes into v, refusing
// unknown fields and trailing data; it answers the error itself.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			s.fail(w, r, http.StatusUnsupportedMediaType, CodeMediaType, fmt.Sprintf("Content-Type %q: want application/json", clip(ct)))
			return false
		}
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	if err == nil {
		if _, e := dec.Token(); e != io.EOF {
			err = errors.New("data after the JSON object")
		}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.fail(w, r, http.StatusRequestEntityTooLarge, CodeTooLarge, fmt.Sprintf("body over %d bytes", MaxBody))
			return false
		}
		if errors.Is(err, io.EOF) {
			err = errors.New("empty body")
		}
		s.fail(w, r, http.StatusBadRequest, CodeInvalid, "bad JSON body: "+err.Error())
		return false
	}
	return true
}

// Event is the body of POST /v1/events.
type Event struct {
	Kind string `json:"kind"` // auth-failure or auth-success
	IP   string `json:"ip"`
	User string `json:"user,omitempty"`
	App  string `json:"app,omitempty"`
}

// EventReply answers POST /v1/events.
type EventReply struct {
	Counted []string `json:"counted"` // the jails that counted it
	Bans    []Ban    `json:"bans"`    // the bans it made
}

func (s *Server) events(w http.ResponseWriter, r *http.Request, _ *token) {
	start := s.now()
	var ev Event
	if !s.decodeBody(w, r, &ev) {
		return
	}
	var msg string
	a, err := parseAddr("ip", ev.IP)
	switch {
	case ev.Kind == "":
		msg = "kind is missing: want " + strings.Join(guard.ReportKinds(), " or ")
	case !slices.Contains(guard.ReportKinds(), ev.Kind):
		msg = fmt.Sprintf("kind %q: want %s", clip(ev.Kind), strings.Join(guard.ReportKinds(), " or "))
	case err != nil:
		msg = err.Error()
	case len(ev.User) > maxUser:
		msg = fmt.Sprintf("user is longer than %d bytes", maxUser)
	case ev.App != "" && !guard.ValidApp(ev.App):
		msg = fmt.Sprintf("app %q: want 1 to 64 of a-z, 0-9, '.', '_', '-'", clip(ev.App))
	}
	if msg != "" {
		s.fail(w, r, http.StatusBadRequest, CodeInvalid, msg)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), listen.OrDefault(s.Timeout, DefaultTimeout))
	res, err := s.Guard.Report(ctx, guard.Report{Kind: ev.Kind, Addr: a, User: ev.User, App: ev.App})
	cancel()
	if err != nil {
		s.guardFailed(w, r, "event", err)
		return
	}
	s.metrics().Request(VerdictEvent, s.now().Sub(start))
	out := EventReply{Counted: res.Jails, Bans: []Ban{}}
	if out.Counted == nil {
		out.Counted = []string{}
	}
	for _, b := range res.Bans {
		out.Bans = append(out.Bans, toBan(b))
	}
	reply(w, http.StatusOK, out)
}

// Ban is one ban in a reply.
type Ban struct {
	Jail    string    `json:"jail"`
	Subject string    `json:"subject"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	Nth     int       `json:"nth"`
	Reason  string    `json:"reason,omitempty"`
}

func toBan(b store.Ban) Ban {
	return Ban{Jail: b.Jail, Subject: b.Subject, Created: b.Created.UTC(), Expires: b.Expires.UTC(), Nth: b.Nth, Reason: b.Reason}
}

// BanList answers GET /v1/bans; Lifted answers DELETE /v1/bans.
type BanList struct {
	Bans []Ban `json:"bans"`
}

type Lifted struct {
	Lifted []Ban `json:"lifted"`
}

// BanRequest is the body of POST /v1/bans.
type BanRequest struct {
	Target string `json:"target"`         // an address, a prefix or a login
	Jail   string `json:"jail,omitempty"` // default: the manual jail
	For    string `json:"for,omitempty"`  // a Go duration; default: the jail's bantime
}

func (s *Server) adminCtx(r *http.Request) (context.Context, context.CancelFunc) {
	// Listing and unbanning may read every ban: a few store round trips.
	return context.WithTimeout(r.Context(), 10*listen.OrDefault(s.Timeout, DefaultTimeout))
}

func (s *Server) listBans(w http.ResponseWriter, r *http.Request, _ *token) {
	start := s.now()
	q := r.URL.Query()
	for k := range q {
		if k != "jail" {
			s.fail(w, r, http.StatusBadRequest, CodeInvalid, fmt.Sprintf("unknown parameter %q (jail)", clip(k)))
			return
		}
	}
	ctx, cancel := s.adminCtx(r)
	defer cancel()
	sts, err := s.Guard.Status(ctx, q.Get("jail"))
	if err != nil {
		s.guardFailed(w, r, "bans", err)
		return
	}
	out := BanList{Bans: []Ban{}}
	for _, j := range sts {
		for _, b := range j.Banned {
			out.Bans = append(out.Bans, toBan(b))
		}
	}
	s.metrics().Request(VerdictAdmin, s.now().Sub(start))
	reply(w, http.StatusOK, out)
}

func (s *Server) ban(w http.ResponseWriter, r *http.Request, _ *token) {
	start := s.now()
	var req BanRequest
	if !s.decodeBody(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.Target) == "" {
		s.fail(w, r, http.StatusBadRequest, CodeInvalid, "target is missing: an address, a prefix or a login")
		return
	}
	var d time.Duration
	if req.For != "" {
		var err error
		if d, err = time.ParseDuration(req.For); err != nil || d <= 0 {
			s.fail(w, r, http.StatusBadRequest, CodeInvalid, fmt.Sprintf("for %q: want a positive duration like 1h", clip(req.For)))
			return
		}
	}
	ctx, cancel := s.adminCtx(r)
	defer cancel()
	b, err := s.Guard.Ban(ctx, req.Target, req.Jail, d)
	if err != nil {
		s.guardFailed(w, r, "ban", err)
		return
	}
	s.metrics().Request(VerdictAdmin, s.now().Sub(start))
	reply(w, http.StatusCreated, toBan(b))
}

func (s *Server) unban(w http.ResponseWriter, r *http.Request, _ *token) {
	start := s.now()
	q := r.URL.Query()
	for k := range q {
		if k != "target" {
			s.fail(w, r, http.StatusBadRequest, CodeInvalid, fmt.Sprintf("unknown parameter %q (target)", clip(k)))
			return
		}
	}
	target := q.Get("target")
	if strings.TrimSpace(target) == "" {
		s.fail(w, r, http.StatusBadRequest, CodeInvalid, "target is missing: ?target= an address, a prefix or a login")
		return
	}
	ctx, cancel := s.adminCtx(r)
	defer cancel()
	lifted, err := s.Guard.Unban(ctx, target)
	if err != nil {
		s.guardFailed(w, r, "unban", err)
		return
	}
	if len(lifted) == 0 {
		s.fail(w, r, http.StatusNotFound, CodeNotFound, fmt.Sprintf("%q is not banned", clip(target)))
		return
	}
	out := Lifted{Lifted: []Ban{}}
	for _, b := range lifted {
		out.Lifted = append(out.Lifted, toBan(b))
	}
	s.metrics().Request(VerdictAdmin, s.now().Sub(start))
	reply(w, http.StatusOK, out)
}
