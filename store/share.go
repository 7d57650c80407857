package store

import (
	"context"
	"time"
)

// Sharing is an optional ability of a Store, found by type assertion (both
// backends have it, and store/storetest holds them to it): counting the
// distinct users that log in successfully from one subject (an address or a
// prefix), so that guard can tell a shared address (a webmail, a proxy, a
// big NAT) from a single client. Kept apart from Store so that a Store
// without it still works, without the safety net.
//
// Boundaries are those of windows: a member counts while the age of its
// latest Share is below span. A subject keeps at most limit members (the
// most recently seen), so counts saturate at limit.
type Sharing interface {
	// Share records that member logged in from subject now and returns how
	// many distinct members did within span, this one included (at most
	// limit).
	Share(ctx context.Context, subject, member string, span time.Duration, limit int) (int, error)
	// Sharers returns how many distinct members Share recorded for subject
	// within span (0 if none).
	Sharers(ctx context.Context, subject string, span time.Duration) (int, error)
	// Shared lists the subjects that have at least limit members within
	// span, with their counts.
	Shared(ctx context.Context, span time.Duration, limit int) (map[Subject]int, error)
}
