package memstore

import (
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// tickClock moves on by a millisecond at every reading, so that concurrent
// bans of one subject get distinct times (ban times are a set).
type tickClock struct {
	base time.Time
	ms   atomic.Int64
}

func (c *tickClock) Now() time.Time { return c.base.Add(time.Duration(c.ms.Add(1)) * time.Millisecond) }

// persisted is everything a restart must keep, read from the shards.
type persisted struct {
	bans    map[string]store.Ban // jail|subject → ban
	history map[string][]int64   // jail|subject → ban times
	known   map[string]int64     // key → expiry
}

func dump(s *Store) persisted {
	p := persisted{bans: map[string]store.Ban{}, history: map[string][]int64{}, known: map[string]int64{}}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, bs := range sh.bans {
			for _, b := range bs {
				p.bans[b.Jail+"|"+b.Subject] = b
			}
		}
		for k, h := range sh.history {
			p.history[k.jail+"|"+k.subject] = slices.Clone(h.times)
		}
		for k, kn := range sh.known {
			p.known[k] = kn.exp
		}
		sh.mu.RUnlock()
	}
	return p
}

// TestCompactionUnderHits compacts again and again while writers ban by Hit
// (so that escalation history grows), unban and remember devices, and
// checks that compactions really ran in the middle of writes, and that the
// reopened store has the same bans, ban history and known devices, and
// escalates the next ban of every subject as the old one would have.
func TestCompactionUnderHits(t *testing.T) {
	const (
		writers   = 4
		subjects  = 16 // per writer: each is banned again and again
		minRounds = 200
		maxRounds = 5000
		wantOver  = 5 // compactions with writes in flight
		ttl       = time.Hour
	)
	dir := t.TempDir()
	clk := &tickClock{base: time.Now().Round(0)} // no monotonic reading: bans compare with ==
	s := open(t, Options{Dir: dir, Now: clk.Now})
	ctx := t.Context()
	subject := func(w, i int) string { return fmt.Sprintf("net:10.%d.0.%d/32", w, i%subjects) }

	var (
		writes     atomic.Int64 // completed store calls
		overlapped atomic.Int64 // compactions during which writes completed
		wg         sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			for i := 0; i < maxRounds && (i < minRounds || overlapped.Load() < wantOver); i++ {
				h := hitOf(subject(w, i))
				for range h.MaxRetry {
					if _, err := s.Hit(ctx, h); err != nil {
						t.Errorf("Hit = %v", err)
						return
					}
					writes.Add(1)
				}
				if i%5 == 0 {
					if _, err := s.Unban(ctx, subject(w, i)); err != nil {
						t.Errorf("Unban = %v", err)
						return
					}
					writes.Add(1)
				}
				if err := s.Remember(ctx, fmt.Sprintf("user+net:u%d@example.org|%s", i%7, subject(w, i)), ttl); err != nil {
					t.Errorf("Remember = %v", err)
					return
				}
				writes.Add(1)
			}
		})
	}
	writing := make(chan struct{})
	go func() { wg.Wait(); close(writing) }()
	compactions := 0
	for done := false; !done; {
		select {
		case <-writing:
			done = true
		default:
		}
		before := writes.Load()
		if err := s.compact(); err != nil {
			t.Fatalf("compact = %v", err)
		}
		compactions++
		if writes.Load() != before {
			overlapped.Add(1)
		}
	}
	t.Logf("%d compactions, %d of them with writes in flight; %d writes", compactions, overlapped.Load(), writes.Load())
	if overlapped.Load() < wantOver {
		t.Fatalf("%d compactions overlapped the writes, want at least %d: the test did not test compaction under writes", overlapped.Load(), wantOver)
	}

	want := dump(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, Options{Dir: dir, Now: clk.Now})
	defer s.Close()
	got := dump(s)

	if !maps.Equal(got.bans, want.bans) {
		for k, b := range want.bans {
			if got.bans[k] != b {
				t.Errorf("ban %s after reopen = %+v, want %+v", k, got.bans[k], b)
			}
		}
		t.Fatalf("bans after reopen: %d, want %d", len(got.bans), len(want.bans))
	}
	if !maps.EqualFunc(got.history, want.history, slices.Equal) {
		for k, ts := range want.history {
			if !slices.Equal(got.history[k], ts) {
				t.Errorf("history of %s after reopen: %d times, want %d", k, len(got.history[k]), len(ts))
			}
		}
		t.Fatalf("ban history after reopen: %d subjects, want %d", len(got.history), len(want.history))
	}
	if len(got.known) != len(want.known) {
		t.Errorf("known devices after reopen: %d, want %d", len(got.known), len(want.known))
	}
	for k, exp := range want.known {
		// Remember journals an expiry only when it moved by ttl/64.
		if g, ok := got.known[k]; !ok || g > exp || exp-g >= int64(ttl/64) {
			t.Errorf("known device %s after reopen expires at %d, want %d (at most ttl/64 earlier)", k, g, exp)
		}
	}
	// Recidive: the next ban of each subject is one more than its history.
	for w := range writers {
		for i := range subjects {
			h := hitOf(subject(w, i))
			b := banBy(t, s, h)
			if n := len(want.history["dovecot|"+h.Subject]); b.Nth != n+1 {
				t.Errorf("next ban of %s after reopen: Nth = %d, want %d", h.Subject, b.Nth, n+1)
			}
		}
	}
}
