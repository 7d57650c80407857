// Package store defines what mailguard keeps: sliding failure windows, bans
// with their escalation history, and known devices. Two backends implement it,
// store/memstore (embedded, the default) and store/redisstore (shared by every
// node of a site); store/storetest is the conformance suite both pass.
//
// Time is the caller's: every call that depends on the clock is evaluated at
// the backend's injected clock, so the conformance suite can move time.
//
// Boundaries, the same in every backend: a failure counts while its age is
// below Span; a ban is active while now is before Expires; recidive counts
// bans younger than Recidive.Window; a known device is known while now is
// before its Remember time plus ttl. A Hit that reaches MaxRetry while the
// subject is already banned replaces the ban with the next, escalated one.
// Unban keeps the escalation history. A ban that runs out makes no event.
package store

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// ErrClosed is returned by calls made after Close.
var ErrClosed = errors.New("store: closed")

// A Subject is what a jail counts and bans, in canonical text form:
//
//	net:192.0.2.7/32          an address or prefix (IPv4 /32, IPv6 /64 by default)
//	user:alice@example.org    a login, lower-cased
//	user+net:alice@example.org|2001:db8::/64
//
// guard builds subjects; stores treat them as opaque strings.
type Subject = string

// Query is everything one request needs to know, answered in one round trip.
type Query struct {
	// Subjects are looked up for active bans, in any jail.
	Subjects []Subject
	// Known, when not empty, is a known-device key whose presence is reported.
	Known string
	// Counts are failure windows to read (for tarpits and status).
	Counts []Window
	// TOTPUser, when not empty, is a login whose TOTP state is reported in
	// Answer.TOTP: enrolled, and TOTPPrefix approved (stores implementing
	// TOTPStore; others leave Answer.TOTP zero).
	TOTPUser   string
	TOTPPrefix netip.Prefix
}

// Window names one sliding failure window.
type Window struct {
	Jail    string
	Subject Subject
	Span    time.Duration // findtime
}

// Answer is the reply to a Query.
type Answer struct {
	Bans   []Ban // active bans on any of Query.Subjects; empty if none
	Known  bool  // Query.Known is a known device
	Counts []int // failures inside each Query.Counts window, in order
	TOTP   TOTPState
}

// Hit records one failure of Subject in Jail and, atomically, tests the
// threshold and creates the ban.
type Hit struct {
	Jail    string
	Subject Subject
	// Member, when not empty, makes the failure count once per distinct
	// Member within Span (distinct wrong passwords). Empty: every hit counts.
	Member string
	Span   time.Duration // findtime: the sliding window
	// MaxRetry is the failure count that bans (> 0). The window keeps at most
	// MaxRetry+1 failures, so Count saturates there. A ban clears the window.
	MaxRetry int
	// BanTime is the first ban's duration. Zero: count only, never ban
	// (rate limits).
	BanTime  time.Duration
	Recidive Recidive
	Reason   string
	// Settle, when set, records no failure: the failure was counted by an
	// earlier Hit with a zero BanTime (the blast-radius guard's, which then
	// decides whether the ban may be made), and this Hit places the ban it
	// led to. The threshold is tested as the Hit without Settle would test
	// it, on the failures the window holds plus this one: MaxRetry 1 always
	// bans, and a ban placed meanwhile (which cleared the window) is not
	// placed twice. The ban escalates and counts towards recidive as any,
	// and clears the window; without a ban the window is left as it is.
	// TotalFailed is unchanged, Member ignored, and Count is the failures
	// the window holds.
	Settle bool
}

// Recidive is fail2ban's bantime.increment: the k-th ban of a (jail, subject)
// within Window lasts BanTime × Factor^(k−1), capped at MaxTime.
// A zero Window disables escalation.
type Recidive struct {
	Window  time.Duration
	Factor  float64
	MaxTime time.Duration
}

// Duration returns the escalated duration of the nth ban (n ≥ 1).
func (r Recidive) Duration(base time.Duration, n int) time.Duration {
	if r.Window <= 0 || r.Factor <= 1 || n <= 1 {
		return capped(base, r.MaxTime)
	}
	d := float64(base)
	for i := 1; i < n; i++ {
		d *= r.Factor
		if r.MaxTime > 0 && d >= float64(r.MaxTime) {
			return r.MaxTime
		}
		if d > float64(1<<62) {
			return time.Duration(1 << 62)
		}
	}
	return capped(time.Duration(d), r.MaxTime)
}

func capped(d, max time.Duration) time.Duration {
	if max > 0 && d > max {
		return max
	}
	return d
}

// HitResult says what a Hit did.
type HitResult struct {
	Count int  // failures inside the window, this one included
	Ban   *Ban // the ban this hit created, or nil
}

// Ban is an active (or, in events, lifted) ban.
type Ban struct {
	Jail    string
	Subject Subject
	Created time.Time
	Expires time.Time
	Nth     int // 1 for a first ban, k for the k-th within the recidive window
	Reason  string
}

// EventKind tells a ban event apart from an unban.
type EventKind int

const (
	Banned EventKind = iota + 1
	Unbanned
)

func (k EventKind) String() string {
	switch k {
	case Banned:
		return "ban"
	case Unbanned:
		return "unban"
	}
	return "unknown"
}

// Event is a ban or unban, as seen by every node.
type Event struct {
	Kind EventKind
	Ban  Ban
}

// JailStats are a jail's counters, fail2ban-client status style.
type JailStats struct {
	Failing     int   // subjects with failures inside their window now
	TotalFailed int64 // failures ever recorded
	TotalBanned int64 // bans ever created
}

// Store is the state behind the jails. All methods are safe for concurrent use.
type Store interface {
	// Check answers a Query in one round trip.
	Check(ctx context.Context, q Query) (Answer, error)
	// Hit records a failure and bans at the threshold, atomically.
	Hit(ctx context.Context, h Hit) (HitResult, error)
	// Ban places (or replaces) a ban of b.Jail on b.Subject, ending at
	// b.Expires, which must be after b.Created (default now). It counts
	// towards recidive for the longest recidive window the store has seen
	// (at least seven days).
	Ban(ctx context.Context, b Ban) (Ban, error)
	// Unban lifts every jail's ban on subject and returns the lifted bans
	// (none: an empty slice and no error).
	Unban(ctx context.Context, subject Subject) ([]Ban, error)
	// Bans lists the active bans.
	Bans(ctx context.Context) ([]Ban, error)
	// Reset forgets the failures of subject in jail.
	Reset(ctx context.Context, jail string, subject Subject) error
	// Remember records key as a known device for ttl.
	Remember(ctx context.Context, key string, ttl time.Duration) error
	// Stats returns the counters of the named jails.
	Stats(ctx context.Context, jails []string) (map[string]JailStats, error)
	// Watch calls fn for every ban and unban made through any node sharing
	// this store, from now on, until ctx ends; it returns ctx.Err() then.
	// fn is called from one goroutine, in order.
	Watch(ctx context.Context, fn func(Event)) error
	// Close releases the store; later calls return ErrClosed.
	Close() error
}
