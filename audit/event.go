// Package audit is mailguard's audit trail: every counted failure, refusal,
// ban and unban becomes an Event with a short id, kept per subject in the
// store (store.Auditing, so that every node can explain any node's
// decisions) and, optionally, appended to a JSON-lines file rotated by size.
//
// The file format is stable (field names are a promise, see README "Audit
// trail"): one Event as a JSON object per line, in the order recorded. Read
// it back with Read or ReadFiles.
package audit

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Version is the record format's version, in every record's "v".
const Version = 1

// Kind is what an Event records.
type Kind string

// Event kinds.
const (
	KindFailure Kind = "failure" // a failure counted by at least one jail
	KindRefusal Kind = "refusal" // a client or user refused by a ban
	KindBan     Kind = "ban"     // a ban made (by a jail or an administrator)
	KindUnban   Kind = "unban"   // a ban lifted by an administrator
)

// Event is one decision. The zero value of a field means "not known" or
// "not applicable" and is left out of the JSON.
type Event struct {
	V    int       `json:"v"`
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	Node string    `json:"node,omitempty"` // the node that decided
	Kind Kind      `json:"kind"`
	// Source is the front end or log source: "postfix", "dovecot",
	// "api:APP", "log:FILE:FILTER", "admin".
	Source string `json:"source,omitempty"`
	// Event is the failure's kind as jails count it (guard.EventAuthFailure,
	// guard.EventAbuse, ...), for failures.
	Event    string `json:"event,omitempty"`
	Protocol string `json:"protocol,omitempty"` // imap, pop3, smtp, ...
	Addr     string `json:"addr,omitempty"`     // the client address
	// User is the login as audit.user says: plain, "h:" and 16 hex digits of
	// its SHA-256 (UserHash), or left out.
	User string `json:"user,omitempty"`
	// Jails are the jails that counted a failure; Jail the jail of a ban,
	// unban or the ban behind a refusal.
	Jails []string `json:"jails,omitempty"`
	Jail  string   `json:"jail,omitempty"`
	// Subject is the subject banned, unbanned or refusing.
	Subject string `json:"subject,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Count is the failures inside the window when the ban was made
	// (bans), or the most any jail counted (failures).
	Count int `json:"count,omitempty"`
	// Nth and BanTime: the ban is the Nth of its subject in the recidive
	// window, lasting BanTime (a Go duration, "2h0m0s") until Expires.
	Nth     int       `json:"nth,omitempty"`
	BanTime string    `json:"bantime,omitempty"`
	Expires time.Time `json:"expires,omitzero"`
	// Spared names the safety rule that kept a failure from banning
	// ("shared-address"), for failures that reached maxretry.
	Spared string `json:"spared,omitempty"`

	// Subjects are the trails the event joins in the store (the client's
	// address, prefix and user subjects); not in the record.
	Subjects []string `json:"-"`
}

// NewID returns a short random id: 10 characters of [0-9a-z] (50 bits).
func NewID() string {
	const digits = "0123456789abcdefghijklmnopqrstuvwxyz"
	var b [10]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	for i := range b {
		b[i] = digits[int(b[i])%len(digits)]
	}
	return string(b[:])
}

// ValidID reports whether s looks like an id of NewID.
func ValidID(s string) bool {
	if len(s) != 10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}

// UserMode is how an Event names the user (audit.user).
type UserMode string

const (
	UserPlain  UserMode = "plain" // the login as given, lower-cased
	UserHashed UserMode = "hash"  // UserHash of the login
	UserOmit   UserMode = "omit"  // no user at all
)

// DefaultUserMode is hash: the trail and its file outlive bans, and logins
// are personal data, but a hash still lets explain find a user's events
// and replay count per-user jails.
const DefaultUserMode = UserHashed

// UserModes returns the known modes, in a new slice.
func UserModes() []UserMode { return []UserMode{UserPlain, UserHashed, UserOmit} }

// Valid reports whether m is one of UserModes.
func (m UserMode) Valid() bool {
	for _, x := range UserModes() {
		if m == x {
			return true
		}
	}
	return false
}

// User returns the login as m records it.
func (m UserMode) User(login string) string {
	login = strings.ToLower(strings.TrimSpace(login))
	if login == "" {
		return ""
	}
	switch m {
	case UserPlain:
		return login
	case UserOmit:
		return ""
	}
	return UserHash(login)
}

// Subject returns subject with its login, if it names one ("user:LOGIN",
// "user+net:LOGIN|PREFIX"), as m records logins: a hashed or omitted
// login does not come back through the subject of a ban.
func (m UserMode) Subject(subject string) string {
	if m == UserPlain {
		return subject
	}
	if login, ok := strings.CutPrefix(subject, "user:"); ok {
		return "user:" + m.User(login)
	}
	if rest, ok := strings.CutPrefix(subject, "user+net:"); ok {
		if i := strings.LastIndexByte(rest, '|'); i >= 0 {
			return "user+net:" + m.User(rest[:i]) + rest[i:]
		}
	}
	return subject
}

// UserHash is "h:" and the first 16 hex digits of the SHA-256 of the
// lower-cased login: a pseudonym, the same on every node.
func UserHash(login string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(strings.TrimSpace(login))))
	return "h:" + hex.EncodeToString(sum[:8])
}

// Marshal encodes e as one JSON line without the newline.
func Marshal(e Event) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("audit: encode: %w", err)
	}
	return b, nil
}

// Unmarshal decodes one record.
func Unmarshal(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return Event{}, fmt.Errorf("audit: decode: %w", err)
	}
	if e.ID == "" || e.Kind == "" {
		return Event{}, fmt.Errorf("audit: decode: record without id or kind")
	}
	return e, nil
}
