package store

import (
	"context"
	"errors"
	"time"
)

// Holding is an optional ability of a Store, found by type assertion (both
// backends have it, and store/storetest holds them to it): the site-wide
// count of bans behind the blast-radius guard (safety.max_bans_per_minute),
// and the bans it holds back as pending. Kept apart from Store so that a
// Store without it still works, without the guard.
//
// The count is a sliding window of span over every ban the guard was asked
// to admit or released, site-wide (with Redis, across nodes). It keeps at
// most limit+1 entries, so Rate saturates there. A held ban is identified by
// its jail and subject: asking to admit it again while it is held neither
// counts nor holds it twice. A held ban expires, and is dropped unapplied,
// once Held plus BanTime is not after now.
type Holding interface {
	// Admit counts one ban of h.Jail on h.Subject in the window and tells
	// whether it may be applied now: nothing is held and the window holds at
	// most limit bans, this one included. Otherwise h is held (once; its
	// Held is the time it was first held) and Admit returns false. A ban
	// already held returns false and is not counted again. ErrHoldFull: h
	// could not be held (MaxHeld).
	Admit(ctx context.Context, h Held, limit int, span time.Duration) (bool, error)
	// Drain releases held bans, oldest first, as long as the window holds
	// fewer than limit bans, counting each one released; expired ones are
	// dropped (not counted). It returns the released bans and how many
	// expired. One atomic step: nodes draining at once release each ban once.
	Drain(ctx context.Context, limit int, span time.Duration) (released []Held, expired int, err error)
	// Confirm releases the held bans of subject (every one when subject is
	// empty), oldest first, without counting them: an administrator said
	// they are right. Expired ones are dropped and counted in expired.
	Confirm(ctx context.Context, subject Subject) (released []Held, expired int, err error)
	// Held lists the held bans, oldest first (expired ones dropped).
	Held(ctx context.Context) ([]Held, error)
	// Rate returns how many bans the window holds within span (at most the
	// limit+1 of the latest Admit or Drain).
	Rate(ctx context.Context, span time.Duration) (int, error)
}

// Held is a ban the blast-radius guard holds back.
type Held struct {
	Jail    string
	Subject Subject
	Held    time.Time     // when it was first held; Admit sets it to now
	BanTime time.Duration // the first ban's length the jail gives (> 0)
	Reason  string
}

// Expires is when a held ban runs out unapplied.
func (h Held) Expires() time.Time { return h.Held.Add(h.BanTime) }

// MaxHeld bounds the bans a store holds back at once: about 150 bytes each
// in memory, as much again in Redis.
const MaxHeld = 200_000

// ErrHoldFull is returned by Admit when MaxHeld bans are held already.
var ErrHoldFull = errors.New("store: too many bans held back")
