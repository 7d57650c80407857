// Package admin is the daemon's control socket: a small HTTP+JSON API on a
// unix socket (mode 0600) that the mailguard CLI uses for status, ban and
// unban. Only the socket's owner (root, for the packaged daemon) can reach it.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/listen"
	"github.com/mailguard/mailguard/store"
)

// Guard is what the admin API needs from the jail engine.
type Guard interface {
	Status(ctx context.Context, jail string) ([]guard.JailStatus, error)
	Ban(ctx context.Context, target, jail string, d time.Duration) (store.Ban, error)
	Unban(ctx context.Context, target string) ([]store.Ban, error)
}

// JailStatus is one jail in a status reply.
type JailStatus struct {
	Name        string   `json:"name"`
	Key         string   `json:"key"`
	Action      string   `json:"action"`
	MaxRetry    int      `json:"maxretry"`
	FindTime    string   `json:"findtime"`
	BanTime     string   `json:"bantime"`
	Events      []string `json:"events,omitempty"`
	Protocols   []string `json:"protocols,omitempty"`
	Failing     int      `json:"currently_failed"`
	TotalFailed int64    `json:"total_failed"`
	TotalBanned int64    `json:"total_banned"`
	Banned      []Ban    `json:"banned"`
	// ByProtocol: failures this node counted per protocol since it started.
	ByProtocol map[string]int64 `json:"failed_by_protocol,omitempty"`
	// Logs are the log sources that feed the jail (log:PATH:FILTER,
	// journal:MATCHES:FILTER); their matches count under their name in
	// ByProtocol.
	Logs []string `json:"logs,omitempty"`
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

type banRequest struct {
	Target string `json:"target"`
	Jail   string `json:"jail,omitempty"`
	For    string `json:"for,omitempty"`
}

type errorReply struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"` // one of the Code constants
}

// Codes of an error reply (APIError.Code).
const (
	CodeIgnored     = "ignored"     // 409: the target is inside ignoreip
	CodeNotFound    = "not_found"   // 404: no such jail, not banned
	CodeInvalid     = "invalid"     // 400: a bad target, duration or request
	CodeUnavailable = "unavailable" // 503: the store failed or timed out; try again
)

// Defaults used for zero fields of Server: the CLI opens one connection per
// command; the cap and timeouts keep a stuck or flooding local client from
// holding file descriptors.
const (
	DefaultMaxConns          = 16
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultIdleTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
)

// Server is the admin API. Serve it on the socket from Listen. Set the
// fields before Serve.
type Server struct {
	Guard Guard
	// TOTP serves the totp commands; nil: they answer CodeDisabled.
	TOTP TOTP
	// TOTPURL is totp.url, the approval page: enrolment links are under it.
	TOTPURL string
	Log     *slog.Logger // nil: slog.Default()
	// MaxConns caps the open connections: at the cap the connection idle the
	// longest is closed to make room. Zero: DefaultMaxConns.
	MaxConns int
	// ReadHeaderTimeout bounds reading a request's headers, IdleTimeout a
	// kept-alive connection between requests, WriteTimeout a request and its
	// answer. Zero: the defaults above.
	ReadHeaderTimeout, IdleTimeout, WriteTimeout time.Duration

	// Kernel lists this node's kernel firewall for explain, and
	// FirewallBackend names it; nil or "none": no kernel firewall.
	Kernel          func(ctx context.Context) ([]firewall.Entry, error)
	FirewallBackend string

	now func() time.Time // explain's clock, for tests; nil: time.Now

	srv listen.HTTP
}

// Serve answers on l until Close, then returns nil. It closes l.
func (s *Server) Serve(l net.Listener) error {
	rh := listen.OrDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	srv, cl := listen.NewServer(l, s.Handler(), listen.Limits{
		MaxConns:          listen.OrDefault(s.MaxConns, DefaultMaxConns),
		ReadHeaderTimeout: rh,
		ReadTimeout:       rh + 5*time.Second,
		IdleTimeout:       listen.OrDefault(s.IdleTimeout, DefaultIdleTimeout),
		WriteTimeout:      listen.OrDefault(s.WriteTimeout, DefaultWriteTimeout),
	}, s.log())
	if err := s.srv.Serve(srv, cl); err != nil {
		return fmt.Errorf("admin: %w", err)
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

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", s.status)
	mux.HandleFunc("POST /ban", s.ban)
	mux.HandleFunc("POST /unban", s.unban)
	mux.HandleFunc("GET /shared", s.shared)
	s.totpRoutes(mux)
	mux.HandleFunc("GET /explain", s.explain)
	mux.HandleFunc("GET /held", s.held)
	mux.HandleFunc("POST /confirm", s.confirm)
	return mux
}

// Listen creates the socket at path (its directory with mode 0700 if
// missing, a stale socket removed) with mode 0600. A directory another user
// owns or may write is an error wrapping ErrUnsafeSocket.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("admin: socket directory: %w", err)
	}
	if err := checkDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	old := umask(0o177) // no moment with a wider mode than 0600
	l, err := listen.Listen("unix:"+path, 0o600, "")
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	return l, nil
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, kind string, err error) {
	reply(w, code, errorReply{Error: err.Error(), Code: kind})
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	sts, err := s.Guard.Status(r.Context(), r.URL.Query().Get("jail"))
	if err != nil {
		s.guardFailed(w, "status", err)
		return
	}
	out := make([]JailStatus, 0, len(sts))
	for _, j := range sts {
		js := JailStatus{
			Name: j.Name, Key: string(j.Key), Action: string(j.Action), MaxRetry: j.MaxRetry,
			FindTime: j.FindTime.String(), BanTime: j.BanTime.String(), Events: j.Events, Protocols: j.Protocols,
			Failing: j.Failing, TotalFailed: j.TotalFailed, TotalBanned: j.TotalBanned, Banned: []Ban{},
			ByProtocol: j.ByProtocol, Logs: j.Logs,
		}
		for _, b := range j.Banned {
			js.Banned = append(js.Banned, toBan(b))
		}
		out = append(out, js)
	}
	reply(w, http.StatusOK, out)
}

func toBan(b store.Ban) Ban {
	return Ban{Jail: b.Jail, Subject: b.Subject, Created: b.Created.UTC(), Expires: b.Expires.UTC(), Nth: b.Nth, Reason: b.Reason}
}

func decode(w http.ResponseWriter, r *http.Request) (banRequest, bool) {
	var req banRequest
	return req, decodeInto(w, r, &req)
}

func decodeInto(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(v); err != nil {
		fail(w, http.StatusBadRequest, CodeInvalid, fmt.Errorf("bad request: %w", err))
		return false
	}
	return true
}

func (s *Server) ban(w http.ResponseWriter, r *http.Request) {
	req, ok := decode(w, r)
	if !ok {
		return
	}
	var d time.Duration
	if req.For != "" {
		var err error
		if d, err = time.ParseDuration(req.For); err != nil || d <= 0 {
			fail(w, http.StatusBadRequest, CodeInvalid, fmt.Errorf("--for %q: want a positive duration like 1h", req.For))
			return
		}
	}
	b, err := s.Guard.Ban(r.Context(), req.Target, req.Jail, d)
	if err != nil {
		if errors.Is(err, guard.ErrIgnored) {
			s.log().Warn("ban refused", "key", req.Target, "reason", "ignoreip")
		}
		s.guardFailed(w, "ban", err)
		return
	}
	reply(w, http.StatusOK, toBan(b))
}

// guardFailed answers an error of the Guard: the caller's mistakes (see
// guard.ErrIgnored, ErrNoJail, ErrTarget) are 4xx; anything else is the
// store failing or timing out, 503, which a retry may cure.
func (s *Server) guardFailed(w http.ResponseWriter, op string, err error) {
	switch {
	case errors.Is(err, guard.ErrIgnored):
		fail(w, http.StatusConflict, CodeIgnored, err)
	case errors.Is(err, guard.ErrNoJail):
		fail(w, http.StatusNotFound, CodeNotFound, err)
	case errors.Is(err, guard.ErrTarget):
		fail(w, http.StatusBadRequest, CodeInvalid, err)
	default:
		s.log().Warn("admin: store failed", "op", op, "error", err)
		fail(w, http.StatusServiceUnavailable, CodeUnavailable, fmt.Errorf("%s: the store failed, try again: %w", op, err))
	}
}

func (s *Server) unban(w http.ResponseWriter, r *http.Request) {
	req, ok := decode(w, r)
	if !ok {
		return
	}
	lifted, err := s.Guard.Unban(r.Context(), req.Target)
	if err != nil {
		s.guardFailed(w, "unban", err)
		return
	}
	out := []Ban{}
	for _, b := range lifted {
		out = append(out, toBan(b))
	}
	if len(out) == 0 {
		fail(w, http.StatusNotFound, CodeNotFound, fmt.Errorf("%s is not banned", req.Target))
		return
	}
	reply(w, http.StatusOK, out)
}
