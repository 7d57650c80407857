package authhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
)

// Command is the query parameter Dovecot sends: POST {url}?command=allow|report.
type Command string

const (
	CommandAllow  Command = "allow"  // before (and, for a right password, after) the password check
	CommandReport Command = "report" // after authentication, with Success and PolicyReject
)

// Request is the JSON body of an auth-policy request, as Dovecot builds it from
// auth_policy_request_attributes (2.3) or the auth_policy_request_attributes
// block (2.4) of our contrib configs. Every attribute is a JSON string;
// Success, PolicyReject and TLS are JSON booleans. Unknown fields (including
// the one-level objects Dovecot makes of keys with a '/') are ignored.
//
// Request implements slog.LogValuer without PasswordHash: it is never logged.
type Request struct {
	Login        string `json:"login"`
	PasswordHash string `json:"pwhash"`
	Remote       string `json:"remote"`
	DeviceID     string `json:"device_id"`
	Protocol     string `json:"protocol"`
	SessionID    string `json:"session_id"`
	// FailType is sent by Dovecot 2.4 in reports: credentials, account,
	// expired, disabled, internal or policy. Empty with 2.3.
	FailType     string `json:"fail_type"`
	Success      bool   `json:"success"`       // report only
	PolicyReject bool   `json:"policy_reject"` // report only: we refused the login
	TLS          bool   `json:"tls"`
}

// DecodeRequest decodes one request body. It fails on anything but a single
// JSON object whose known fields have the types Dovecot sends.
func DecodeRequest(body []byte) (Request, error) {
	if r, ok := decodeFlat(body); ok {
		return r, nil
	}
	var r Request
	if err := json.Unmarshal(body, &r); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) && ute.Field != "" {
			return Request{}, fmt.Errorf("field %q: want a JSON %s, got %s", ute.Field, ute.Type, ute.Value)
		}
		return Request{}, fmt.Errorf("body is not a JSON object: %w", err)
	}
	return r, nil
}

// Addr parses Remote (%{rip}). IPv4-mapped IPv6 addresses are unmapped and
// zones dropped.
func (r *Request) Addr() (netip.Addr, error) {
	if r.Remote == "" {
		return netip.Addr{}, errors.New("no remote attribute: add remote=%{rip} to auth_policy_request_attributes")
	}
	a, err := netip.ParseAddr(r.Remote)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("remote: %w", err)
	}
	return a.Unmap().WithZone(""), nil
}

// Fail types of Dovecot 2.4's fail_type (src/auth/auth-policy.c,
// auth_policy_fail_type), sent in reports; empty in allows, in reports of a
// successful login, and with Dovecot 2.3.
const (
	FailCredentials = "credentials" // wrong password: counted
	FailAccount     = "account"     // unknown user: counted (guessing user names)
	FailExpired     = "expired"     // right password, expired: not a guess
	FailDisabled    = "disabled"    // account disabled: not a guess
	FailInternal    = "internal"    // passdb or scheme failure: Dovecot's, not the client's
	FailPolicy      = "policy"      // refused by the policy server (us): counted once already
)

// Counts reports whether a report is a guessing failure: a login that did
// not succeed, that we did not refuse (policy_reject), and whose fail_type is
// not one of expired, disabled, internal or policy. An empty fail_type
// (Dovecot 2.3), credentials and account count, and so does a value this
// package does not know: a future Dovecot must not switch counting off.
func (r *Request) Counts() bool {
	if r.Success || r.PolicyReject {
		return false
	}
	switch r.FailType {
	case FailExpired, FailDisabled, FailInternal, FailPolicy:
		return false
	}
	return true
}

// KnownFailType reports whether FailType is empty or one of the Fail
// constants.
func (r *Request) KnownFailType() bool {
	switch r.FailType {
	case "", FailCredentials, FailAccount, FailExpired, FailDisabled, FailInternal, FailPolicy:
		return true
	}
	return false
}

// LogValue logs the request without its password hash.
func (r Request) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("login", r.Login),
		slog.String("remote", r.Remote),
		slog.String("protocol", r.Protocol),
		slog.String("session_id", r.SessionID),
		slog.Bool("success", r.Success),
		slog.Bool("policy_reject", r.PolicyReject),
		slog.String("fail_type", r.FailType),
	)
}

// NormalizeProtocol maps Dovecot's %s (service name) onto imap, pop3, smtp,
// submission, sieve and other, so that jail protocol filters and metrics
// labels see a small known set.
func NormalizeProtocol(p string) string {
	switch strings.ToLower(strings.TrimSpace(p)) {
	case "imap", "imaps":
		return "imap"
	case "pop3", "pop3s":
		return "pop3"
	case "smtp", "smtps":
		return "smtp"
	case "submission":
		return "submission"
	case "sieve", "managesieve":
		return "sieve"
	}
	return "other"
}
