package authhook

import (
	"time"

	"github.com/mailguard/mailguard/internal/listen"
)

// Tarpit is a progressive delay, in Dovecot's before-auth allow, for clients
// with recent failures. The zero value (Base 0) never delays.
//
// It is aware of the protocol and of whose failures it counts:
//
//   - SMTP AUTH (Postfix with smtpd_sasl_type = dovecot) waits at most
//     SMTPMax. Postfix gives Dovecot about 10 s for the whole exchange and
//     answers "454 4.7.0 Temporary authentication failure" after that;
//     Dovecot adds auth_failure_delay (2 s) to every failure. A short
//     tarpit keeps the answer a definite 235 or 535.
//   - Failures counted against the login's user from other networks (jails
//     keyed by user alone) delay at most UserMax: a user with the right
//     password on a new network is not held for long because others
//     guessed at her account. From her known devices they do not count.
//
// Dovecot's own per-address penalty (anvil, up to 15 s before the password
// check) comes on top of this; contrib/dovecot switches it off so that the
// tarpit, counted site-wide and per prefix, is the only delay besides
// auth_failure_delay.
type Tarpit struct {
	// Start is the failure count from which logins are delayed (values below 1 mean 1).
	Start int
	// Base is the first delay; each further failure doubles it.
	Base time.Duration
	// Max caps the delay (zero: DefaultTarpit.Max).
	Max time.Duration
	// SMTPMax caps the delay of SMTP AUTH (protocols smtp and submission;
	// zero: DefaultTarpit.SMTPMax).
	SMTPMax time.Duration
	// UserMax caps the delay due to failures against the user alone (zero:
	// DefaultTarpit.UserMax).
	UserMax time.Duration
}

// DefaultTarpit delays from the 3rd failure: 1s, 2s, 4s, then 5s; SMTP AUTH
// at most 3s (3s + auth_failure_delay 2s stays well within Postfix's 10s);
// failures against the user from elsewhere at most 1s.
var DefaultTarpit = Tarpit{Start: 3, Base: time.Second, Max: 5 * time.Second, SMTPMax: 3 * time.Second, UserMax: time.Second}

// Delay returns the delay for a client with failures recent failures:
// Base × 2^(failures−Start), capped at Max; zero below Start.
func (t Tarpit) Delay(failures int) time.Duration {
	start := max(t.Start, 1)
	if t.Base <= 0 || failures < start {
		return 0
	}
	limit := listen.OrDefault(t.Max, DefaultTarpit.Max)
	d := t.Base
	for i := start; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// DelayFor returns the delay of a before-auth allow: Delay of the client's
// own failures or of its user's failures elsewhere (at most UserMax),
// whichever is longer, at most SMTPMax for SMTP AUTH. protocol is a
// NormalizeProtocol name.
func (t Tarpit) DelayFor(failures, userFailures int, protocol string) time.Duration {
	d := max(t.Delay(failures), min(t.Delay(userFailures), listen.OrDefault(t.UserMax, DefaultTarpit.UserMax)))
	if protocol == "smtp" || protocol == "submission" {
		d = min(d, listen.OrDefault(t.SMTPMax, DefaultTarpit.SMTPMax))
	}
	return d
}

// status turns DelayFor into Dovecot's status: whole seconds, rounded up.
func (t Tarpit) status(failures, userFailures int, protocol string) int {
	d := t.DelayFor(failures, userFailures, protocol)
	return int((d + time.Second - 1) / time.Second)
}
