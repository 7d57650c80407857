package deadline

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestShared(t *testing.T) {
	const timeout = 500 * time.Millisecond
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := New(parent, timeout)
	if got, want := s.slot, 10*time.Millisecond; got != want {
		t.Fatalf("slot of %v = %v, want %v", timeout, got, want)
	}
	t0 := time.Now()
	tests := []struct {
		name string
		at   time.Duration // since t0
		same bool          // the context of t0
	}{
		{"start of the slot", 0, true},
		{"inside the slot", 9 * time.Millisecond, true},
		{"end of the slot", 10 * time.Millisecond, false},
		{"before the slot (a clock step back)", -time.Millisecond, false},
	}
	first := s.Context(t0)
	for _, tt := range tests {
		now := t0.Add(tt.at)
		// Each case starts from the t0 slot.
		s.cur.Store(&slot{ctx: first, end: t0.Add(s.slot)})
		ctx := s.Context(now)
		if (ctx == first) != tt.same {
			t.Errorf("%s: same context as at t0 = %v, want %v", tt.name, ctx == first, tt.same)
		}
		d, ok := ctx.Deadline()
		if !ok || d.Before(now.Add(timeout)) || d.After(now.Add(timeout+s.slot)) {
			t.Errorf("%s: deadline %v after the request, want within [%v, %v]", tt.name, d.Sub(now), timeout, timeout+s.slot)
		}
	}
	cancel()
	if err := s.Context(t0).Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("after the parent's cancel: Err = %v, want Canceled", err)
	}
	if err := s.Context(t0.Add(time.Hour)).Err(); !errors.Is(err, context.Canceled) {
		t.Errorf("a new slot after the parent's cancel: Err = %v, want Canceled", err)
	}
}

func TestSlot(t *testing.T) {
	for timeout, want := range map[time.Duration]time.Duration{
		500 * time.Millisecond: 10 * time.Millisecond,
		10 * time.Millisecond:  time.Millisecond,
		time.Nanosecond:        time.Millisecond,
	} {
		if got := Slot(timeout); got != want {
			t.Errorf("Slot(%v) = %v, want %v", timeout, got, want)
		}
	}
}

func TestDeadlineEnds(t *testing.T) {
	s := New(context.Background(), time.Millisecond)
	ctx := s.Context(time.Now())
	<-ctx.Done() // the shared deadline passes by itself
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("Err = %v, want DeadlineExceeded", ctx.Err())
	}
}
