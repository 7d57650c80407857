package store

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// TOTPStore keeps the TOTP second factor (package totp): enrolments with
// their sealed secrets and last used steps, approved devices, pending
// logins and one-time enrolment links. Both backends implement it; guard
// and totp find it by type assertion on a Store, so stores that do not
// keep TOTP state need not.
//
// Users are normalised logins (guard.NormUser); the store treats them, and
// Secret, as opaque. Approvals and pending logins are keyed by the trust
// prefix the caller computed. Whether a user is enrolled and a prefix
// approved is also answered by Check (Query.TOTPUser), in the same round
// trip as the ban lookup of the after-auth check.
//
// Boundaries, the same in every backend: an approval is active while now is
// before Expires; a pending login is listed while now is before its At plus
// the ttl it was added with; a token is valid while now is before Expires.
type TOTPStore interface {
	// Enrol stores e (Secret not empty), replacing any enrolment of e.User;
	// its last used step starts at e.LastStep.
	Enrol(ctx context.Context, e Enrolment) error
	// Enrolment returns user's enrolment, or ErrNotFound.
	Enrolment(ctx context.Context, user string) (Enrolment, error)
	// Enrolments lists every enrolment, by user, without their secrets.
	Enrolments(ctx context.Context) ([]Enrolment, error)
	// Disenrol removes user's enrolment, approvals and pending logins, and
	// reports whether there was an enrolment.
	Disenrol(ctx context.Context, user string) (bool, error)
	// UseStep records step as the last used step of user's enrolment if it
	// is after the one stored, atomically, and reports whether it was: false
	// is a replay (or an older code). ErrNotFound if user is not enrolled.
	UseStep(ctx context.Context, user string, step int64) (bool, error)

	// Approve stores an approval of a.Prefix for a.User until a.Expires,
	// replacing one of the same prefix.
	Approve(ctx context.Context, a Approval) error
	// Revoke removes user's approval of p, or every approval of user when p
	// is not valid, and returns how many active approvals it removed.
	Revoke(ctx context.Context, user string, p netip.Prefix) (int, error)
	// Approvals lists user's active approvals, or everyone's when user is
	// empty, by user then prefix.
	Approvals(ctx context.Context, user string) ([]Approval, error)

	// AddPending keeps p as a refused login of p.User for ttl (> 0), as the
	// first of the list. A pending login of the same prefix and protocol is
	// replaced; at most MaxPending are kept per user, the last added.
	AddPending(ctx context.Context, p Pending, ttl time.Duration) error
	// Pending lists user's live pending logins, the last added first.
	Pending(ctx context.Context, user string) ([]Pending, error)
	// Forget removes user's pending logins from prefixes in ps.
	Forget(ctx context.Context, user string, ps []netip.Prefix) error

	// PutToken stores an enrolment link under id until t.Expires.
	PutToken(ctx context.Context, id string, t Token) error
	// TakeToken returns the token stored under id, or ErrNotFound; with
	// remove it also deletes it, atomically (a link is used once).
	TakeToken(ctx context.Context, id string, remove bool) (Token, error)
}

// ErrNotFound is returned for an enrolment or token that does not exist.
var ErrNotFound = errors.New("store: not found")

// MaxPending is how many pending logins are kept per user.
const MaxPending = 20

// Enrolment is a user's TOTP second factor.
type Enrolment struct {
	User     string
	Secret   []byte // sealed by totp (AES-GCM); empty in Enrolments
	Created  time.Time
	LastStep int64 // the time step of the last accepted code
}

// Approval is an approved device: a user's trust prefix, until Expires.
type Approval struct {
	User    string
	Prefix  netip.Prefix
	Created time.Time
	Expires time.Time
}

// Pending is a login refused for want of an approval: the password was
// right, the client's prefix was not approved.
type Pending struct {
	User     string
	Prefix   netip.Prefix // the trust prefix, what an approval names
	Addr     netip.Addr   // the last client address seen from it
	Protocol string       // imap, pop3, smtp, ...
	At       time.Time    // the last refusal
}

// Token is a one-time enrolment link: the secret the user will enrol, shown
// on the page until a first code confirms it.
type Token struct {
	User    string
	Secret  []byte // sealed by totp
	Expires time.Time
}

// TOTPState is Check's answer about Query.TOTPUser.
type TOTPState struct {
	Enrolled bool // the user has a TOTP enrolment
	Approved bool // and Query.TOTPPrefix is approved for it
}
