package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/mailguard/mailguard/totp"
	"github.com/mailguard/mailguard/totp/web"
)

// TOTP is what the admin API needs of the TOTP service (totp.Service).
type TOTP interface {
	Enrol(ctx context.Context, user string) (totp.Enrolment, error)
	NewEnrolLink(ctx context.Context, user string) (string, error)
	Disable(ctx context.Context, user string) (bool, error)
	List(ctx context.Context) ([]totp.Entry, error)
	Verify(ctx context.Context, user, code string, from netip.Addr) error
	TrustPrefixOf(target string) (netip.Prefix, error)
	Trust(ctx context.Context, user string, p netip.Prefix, ttl time.Duration) error
	Untrust(ctx context.Context, user string, p netip.Prefix) (int, error)
	Pending(ctx context.Context, user string) ([]totp.Pending, error)
	Approvals(ctx context.Context, user string) ([]totp.Approval, error)
	Counts(ctx context.Context) (enrolled, approvals int, err error)
}

// CodeDisabled answers a TOTP command when totp.enabled is false (409).
const CodeDisabled = "disabled"

// TOTPRequest is the body of the TOTP commands.
type TOTPRequest struct {
	User   string `json:"user"`
	Link   bool   `json:"link,omitempty"`   // enroll: make a one-time link
	Code   string `json:"code,omitempty"`   // check
	Target string `json:"target,omitempty"` // trust, untrust: an address or trust prefix
	For    string `json:"for,omitempty"`    // trust: a duration
}

// TOTPEnrolment answers enroll: the otpauth:// URL (the secret: shown to
// the administrator, never logged) or the one-time link.
type TOTPEnrolment struct {
	User string `json:"user"`
	URL  string `json:"otpauth_url,omitempty"`
	Link string `json:"link,omitempty"`
}

// TOTPUser is one enrolled user in list.
type TOTPUser struct {
	User      string         `json:"user"`
	Enrolled  time.Time      `json:"enrolled"`
	Approvals []TOTPApproval `json:"approvals"`
}

// TOTPApproval is an approved device.
type TOTPApproval struct {
	User    string    `json:"user"`
	Prefix  string    `json:"prefix"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// TOTPPending is a refused login waiting for approval.
type TOTPPending struct {
	Prefix   string    `json:"prefix"`
	Addr     string    `json:"addr,omitempty"`
	Protocol string    `json:"protocol"`
	At       time.Time `json:"at"`
}

// TOTPCheck answers check: OK, or why not.
type TOTPCheck struct {
	OK     bool   `json:"ok"`
	Reason string `json:"reason,omitempty"`
}

// TOTPStatus counts enrolled users and active approvals.
type TOTPStatus struct {
	Enrolled  int `json:"enrolled"`
	Approvals int `json:"approvals"`
}

// TOTPResult answers disable and untrust.
type TOTPResult struct {
	User    string `json:"user"`
	Changed int    `json:"changed"` // disable: 1 if the user was enrolled; untrust: approvals removed
}

func (s *Server) totpRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /totp/status", s.totp(s.totpStatus))
	mux.HandleFunc("GET /totp/list", s.totp(s.totpList))
	mux.HandleFunc("GET /totp/pending", s.totp(s.totpPending))
	mux.HandleFunc("POST /totp/enroll", s.totp(s.totpEnrol))
	mux.HandleFunc("POST /totp/disable", s.totp(s.totpDisable))
	mux.HandleFunc("POST /totp/check", s.totp(s.totpCheck))
	mux.HandleFunc("POST /totp/trust", s.totp(s.totpTrust))
	mux.HandleFunc("POST /totp/untrust", s.totp(s.totpUntrust))
}

func (s *Server) totp(h func(http.ResponseWriter, *http.Request, TOTPRequest)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.TOTP == nil {
			fail(w, http.StatusConflict, CodeDisabled, errors.New("TOTP is off (totp.enabled: false)"))
			return
		}
		var req TOTPRequest
		if r.Method == http.MethodPost {
			if !decodeInto(w, r, &req) {
				return
			}
		} else {
			req.User = r.URL.Query().Get("user")
		}
		if strings.Contains(r.URL.Path, "status") || strings.HasSuffix(r.URL.Path, "/list") {
			h(w, r, req)
			return
		}
		if strings.TrimSpace(req.User) == "" {
			fail(w, http.StatusBadRequest, CodeInvalid, errors.New("a login is required"))
			return
		}
		h(w, r, req)
	}
}

// totpFailed answers an error of the TOTP service.
func (s *Server) totpFailed(w http.ResponseWriter, op string, err error) {
	switch {
	case errors.Is(err, totp.ErrNotEnrolled):
		fail(w, http.StatusNotFound, CodeNotFound, errors.New("not enrolled in TOTP"))
	case errors.Is(err, totp.ErrPrefix):
		fail(w, http.StatusBadRequest, CodeInvalid, err)
	default:
		s.log().Warn("admin: totp failed", "op", op, "error", err)
		fail(w, http.StatusServiceUnavailable, CodeUnavailable, fmt.Errorf("totp %s: %w", op, err))
	}
}

func (s *Server) totpStatus(w http.ResponseWriter, r *http.Request, _ TOTPRequest) {
	e, a, err := s.TOTP.Counts(r.Context())
	if err != nil {
		s.totpFailed(w, "status", err)
		return
	}
	reply(w, http.StatusOK, TOTPStatus{Enrolled: e, Approvals: a})
}

func (s *Server) totpList(w http.ResponseWriter, r *http.Request, _ TOTPRequest) {
	es, err := s.TOTP.List(r.Context())
	if err != nil {
		s.totpFailed(w, "list", err)
		return
	}
	as, err := s.TOTP.Approvals(r.Context(), "")
	if err != nil {
		s.totpFailed(w, "list", err)
		return
	}
	byUser := map[string][]TOTPApproval{}
	for _, a := range as {
		byUser[a.User] = append(byUser[a.User], toApproval(a))
	}
	out := make([]TOTPUser, 0, len(es))
	for _, e := range es {
		u := TOTPUser{User: e.User, Enrolled: e.Created.UTC(), Approvals: byUser[e.User]}
		if u.Approvals == nil {
			u.Approvals = []TOTPApproval{}
		}
		out = append(out, u)
	}
	reply(w, http.StatusOK, out)
}

func toApproval(a totp.Approval) TOTPApproval {
	return TOTPApproval{User: a.User, Prefix: a.Prefix.String(), Created: a.Created.UTC(), Expires: a.Expires.UTC()}
}

func (s *Server) totpPending(w http.ResponseWriter, r *http.Request, req TOTPRequest) {
	ps, err := s.TOTP.Pending(r.Context(), req.User)
	if err != nil {
		s.totpFailed(w, "pending", err)
		return
	}
	out := make([]TOTPPending, 0, len(ps))
	for _, p := range ps {
		tp := TOTPPending{Prefix: p.Prefix.String(), Protocol: p.Protocol, At: p.At.UTC()}
		if p.Addr.IsValid() {
			tp.Addr = p.Addr.String()
		}
		out = append(out, tp)
	}
	reply(w, http.StatusOK, out)
}

func (s *Server) totpEnrol(w http.ResponseWriter, r *http.Request, req TOTPRequest) {
	if req.Link {
		if s.TOTPURL == "" {
			fail(w, http.StatusConflict, CodeInvalid, errors.New("enrolment links need totp.url"))
			return
		}
		tok, err := s.TOTP.NewEnrolLink(r.Context(), req.User)
		if err != nil {
			s.totpFailed(w, "enroll", err)
			return
		}
		reply(w, http.StatusOK, TOTPEnrolment{User: req.User, Link: strings.TrimRight(s.TOTPURL, "/") + web.EnrolPath + url.PathEscape(tok)})
		return
	}
	e, err := s.TOTP.Enrol(r.Context(), req.User)
	if err != nil {
		s.totpFailed(w, "enroll", err)
		return
	}
	reply(w, http.StatusOK, TOTPEnrolment{User: e.User, URL: e.URL})
}

func (s *Server) totpDisable(w http.ResponseWriter, r *http.Request, req TOTPRequest) {
	was, err := s.TOTP.Disable(r.Context(), req.User)
	if err != nil {
		s.totpFailed(w, "disable", err)
		return
	}
	if !was {
		s.totpFailed(w, "disable", totp.ErrNotEnrolled)
		return
	}
	reply(w, http.StatusOK, TOTPResult{User: req.User, Changed: 1})
}

// totpCheck verifies a code as the page would, from no address: it counts
// against the user, and a right code is used up.
func (s *Server) totpCheck(w http.ResponseWriter, r *http.Request, req TOTPRequest) {
	err := s.TOTP.Verify(r.Context(), req.User, req.Code, netip.Addr{})
	for _, e := range []error{totp.ErrWrongCode, totp.ErrReplay, totp.ErrNotEnrolled, totp.ErrRefused} {
		if errors.Is(err, e) {
			reply(w, http.StatusOK, TOTPCheck{Reason: e.Error()})
			return
		}
	}
	if err != nil {
		s.totpFailed(w, "check", err)
		return
	}
	reply(w, http.StatusOK, TOTPCheck{OK: true})
}

func (s *Server) totpTrust(w http.ResponseWriter, r *http.Request, req TOTPRequest) {
	p, err := s.TOTP.TrustPrefixOf(req.Target)
	if err != nil {
		s.totpFailed(w, "trust", err)
		return
	}
	var d time.Duration
	if req.For != "" {
		if d, err = time.ParseDuration(req.For); err != nil || d <= 0 {
			fail(w, http.StatusBadRequest, CodeInvalid, fmt.Errorf("--for %q: want a positive duration like 720h", req.For))
			return
		}
	}
	if err := s.TOTP.Trust(r.Context(), req.User, p, d); err != nil {
		s.totpFailed(w, "trust", err)
		return
	}
	as, err := s.TOTP.Approvals(r.Context(), req.User)
	if err != nil {
		s.totpFailed(w, "trust", err)
		return
	}
	for _, a := range as {
		if a.Prefix == p {
			reply(w, http.StatusOK, toApproval(a))
			return
		}
	}
	s.totpFailed(w, "trust", errors.New("the approval is not stored"))
}

func (s *Server) totpUntrust(w http.ResponseWriter, r *http.Request, req TOTPRequest) {
	var p netip.Prefix
	if req.Target != "" {
		var err error
		if p, err = s.TOTP.TrustPrefixOf(req.Target); err != nil {
			s.totpFailed(w, "untrust", err)
			return
		}
	}
	n, err := s.TOTP.Untrust(r.Context(), req.User, p)
	if err != nil {
		s.totpFailed(w, "untrust", err)
		return
	}
	if n == 0 {
		fail(w, http.StatusNotFound, CodeNotFound, errors.New("no such approval"))
		return
	}
	reply(w, http.StatusOK, TOTPResult{User: req.User, Changed: n})
}

// TOTPStatus returns the TOTP counts, or an *APIError with CodeDisabled.
func (c *Client) TOTPStatus(ctx context.Context) (TOTPStatus, error) {
	var out TOTPStatus
	return out, c.do(ctx, http.MethodGet, "/totp/status", nil, &out)
}

// TOTPList lists the enrolled users and their approvals.
func (c *Client) TOTPList(ctx context.Context) ([]TOTPUser, error) {
	var out []TOTPUser
	return out, c.do(ctx, http.MethodGet, "/totp/list", nil, &out)
}

// TOTPPending lists user's pending logins.
func (c *Client) TOTPPending(ctx context.Context, user string) ([]TOTPPending, error) {
	var out []TOTPPending
	return out, c.do(ctx, http.MethodGet, "/totp/pending?user="+url.QueryEscape(user), nil, &out)
}

// TOTPEnrol enrols user, or with link makes a one-time enrolment link.
func (c *Client) TOTPEnrol(ctx context.Context, user string, link bool) (TOTPEnrolment, error) {
	var out TOTPEnrolment
	return out, c.do(ctx, http.MethodPost, "/totp/enroll", TOTPRequest{User: user, Link: link}, &out)
}

// TOTPDisable removes user's enrolment, approvals and pending logins.
func (c *Client) TOTPDisable(ctx context.Context, user string) error {
	var out TOTPResult
	return c.do(ctx, http.MethodPost, "/totp/disable", TOTPRequest{User: user}, &out)
}

// TOTPCheck verifies a code of user (counted, used up when right).
func (c *Client) TOTPCheck(ctx context.Context, user, code string) (TOTPCheck, error) {
	var out TOTPCheck
	return out, c.do(ctx, http.MethodPost, "/totp/check", TOTPRequest{User: user, Code: code}, &out)
}

// TOTPTrust approves target (an address or trust prefix) for user for d
// (zero: totp.trust_ttl).
func (c *Client) TOTPTrust(ctx context.Context, user, target string, d time.Duration) (TOTPApproval, error) {
	var out TOTPApproval
	req := TOTPRequest{User: user, Target: target}
	if d > 0 {
		req.For = d.String()
	}
	return out, c.do(ctx, http.MethodPost, "/totp/trust", req, &out)
}

// TOTPUntrust removes user's approval of target, or all of them when target
// is empty, and returns how many.
func (c *Client) TOTPUntrust(ctx context.Context, user, target string) (int, error) {
	var out TOTPResult
	return out.Changed, c.do(ctx, http.MethodPost, "/totp/untrust", TOTPRequest{User: user, Target: target}, &out)
}
