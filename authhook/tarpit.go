package authhook

import "time"

// Tarpit is a progressive delay for clients with recent failures. The zero
// value (Base 0) never delays.
type Tarpit struct {
	// Start is the failure count from which logins are delayed (values below 1 mean 1).
	Start int
	// Base is the first delay; each further failure doubles it.
	Base time.Duration
	// Max caps the delay (zero: DefaultTarpit.Max). Postfix waits about 10s
	// for Dovecot SASL: keep it well below that.
	Max time.Duration
}

// DefaultTarpit delays from the 3rd failure: 1s, 2s, 4s, then 5s.
var DefaultTarpit = Tarpit{Start: 3, Base: time.Second, Max: 5 * time.Second}

// Delay returns the delay for a client with failures recent failures:
// Base × 2^(failures−Start), capped at Max; zero below Start.
func (t Tarpit) Delay(failures int) time.Duration {
	start := max(t.Start, 1)
	if t.Base <= 0 || failures < start {
		return 0
	}
	limit := t.Max
	if limit <= 0 {
		limit = DefaultTarpit.Max
	}
	d := t.Base
	for i := start; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// status turns a delay into Dovecot's status: whole seconds, rounded up.
func (t Tarpit) status(failures int) int {
	d := t.Delay(failures)
	return int((d + time.Second - 1) / time.Second)
}
