package storetest

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// holdingCases hold every backend to store.Holding, which guard's
// blast-radius guard (safety.max_bans_per_minute) relies on.
var holdingCases = []testCase{
	{"AdmitThenHold", func(t *testing.T, e *env) {
		ho := e.holding()
		const limit, span = 3, time.Minute
		for i := range limit {
			if !e.admit(ho, heldOf(i), limit, span) {
				t.Fatalf("Admit %d of %d = held, want admitted", i+1, limit)
			}
			e.clk.Advance(time.Millisecond)
		}
		for i := limit; i < limit+2; i++ {
			if e.admit(ho, heldOf(i), limit, span) {
				t.Fatalf("Admit %d over limit %d = admitted, want held", i+1, limit)
			}
			e.clk.Advance(time.Millisecond)
		}
		// Asked again while held: neither admitted nor held twice.
		if e.admit(ho, heldOf(limit), limit, span) {
			t.Errorf("Admit of a held ban = admitted")
		}
		e.wantHeld(ho, heldOf(limit), heldOf(limit+1))
		if got := e.rate(ho, span); got != limit+1 {
			t.Errorf("Rate = %d, want %d (saturated at limit+1)", got, limit+1)
		}
		// While bans are held, a new one is held too, whatever the rate.
		e.clk.Advance(span)
		if got := e.rate(ho, span); got != 0 {
			t.Errorf("Rate after span = %d, want 0", got)
		}
		if e.admit(ho, heldOf(9), limit, span) {
			t.Errorf("Admit while bans are held = admitted, want held")
		}
		e.wantHeld(ho, heldOf(limit), heldOf(limit+1), heldOf(9))
	}},
	{"Drain", func(t *testing.T, e *env) {
		ho := e.holding()
		const limit, span = 2, time.Minute
		for i := range 6 {
			e.admit(ho, heldOf(i), limit, span)
			e.clk.Advance(time.Millisecond)
		}
		// Window full: nothing is released.
		if got, exp := e.drain(ho, limit, span); len(got) != 0 || exp != 0 {
			t.Errorf("Drain with a full window = %v, %d; want none", got, exp)
		}
		e.clk.Advance(span)
		got, exp := e.drain(ho, limit, span)
		if exp != 0 || !sameHeld(got, []store.Held{heldOf(2), heldOf(3)}) {
			t.Errorf("Drain = %s, %d expired; want the two oldest", fmtHeld(got), exp)
		}
		if got, _ := e.drain(ho, limit, span); len(got) != 0 {
			t.Errorf("Drain again within span = %s; want none (released bans count)", fmtHeld(got))
		}
		e.wantHeld(ho, heldOf(4), heldOf(5))
		e.clk.Advance(span)
		if got, _ := e.drain(ho, limit, span); !sameHeld(got, []store.Held{heldOf(4), heldOf(5)}) {
			t.Errorf("second Drain = %s; want the rest", fmtHeld(got))
		}
		e.wantHeld(ho)
		// Nothing held, room in the window: admitted again.
		e.clk.Advance(span)
		if !e.admit(ho, heldOf(7), limit, span) {
			t.Errorf("Admit after draining = held, want admitted")
		}
	}},
	{"Expiry", func(t *testing.T, e *env) {
		ho := e.holding()
		const limit, span = 1, time.Minute
		e.admit(ho, heldOf(0), limit, span)
		long, short := heldOf(1), heldOf(2)
		long.BanTime, short.BanTime = time.Hour, 10*time.Minute
		e.admit(ho, long, limit, span)
		e.admit(ho, short, limit, span)
		e.clk.Advance(10*time.Minute - time.Millisecond)
		e.wantHeld(ho, long, short)
		e.clk.Advance(time.Millisecond) // short's age: its bantime
		got, exp := e.drain(ho, limit, span)
		if exp != 1 || !sameHeld(got, []store.Held{long}) {
			t.Errorf("Drain at short's expiry = %s, %d expired; want long, 1 expired", fmtHeld(got), exp)
		}
	}},
	{"Confirm", func(t *testing.T, e *env) {
		ho := e.holding()
		const limit, span = 1, time.Minute
		e.admit(ho, heldOf(0), limit, span)
		a, b, c := heldOf(1), heldOf(2), heldOf(3)
		b.Subject = "user+net:bob@example.org|2001:db8::/64" // '|' in subjects
		b.Reason = "auth-failure imap|odd"
		for _, h := range []store.Held{a, b, c} {
			e.admit(ho, h, limit, span)
			e.clk.Advance(time.Millisecond)
		}
		before := e.rate(ho, span)
		got, exp, err := ho.Confirm(e.ctx, b.Subject)
		if err != nil || exp != 0 || !sameHeld(got, []store.Held{b}) {
			t.Errorf("Confirm(%s) = %s, %d, %v; want it alone", b.Subject, fmtHeld(got), exp, err)
		}
		e.wantHeld(ho, a, c)
		if got, _, err := ho.Confirm(e.ctx, "net:203.0.113.1/32"); err != nil || len(got) != 0 {
			t.Errorf("Confirm(not held) = %s, %v; want none", fmtHeld(got), err)
		}
		got, _, err = ho.Confirm(e.ctx, "")
		if err != nil || !sameHeld(got, []store.Held{a, c}) {
			t.Errorf("Confirm(all) = %s, %v; want a, c", fmtHeld(got), err)
		}
		e.wantHeld(ho)
		if after := e.rate(ho, span); after != before {
			t.Errorf("Rate after Confirm = %d, want %d (confirmed bans are not counted)", after, before)
		}
	}},
	{"Burst", func(t *testing.T, e *env) {
		// Many nodes at once: the limit holds and nothing is lost.
		ho := e.holding()
		const limit, span, n, workers = 50, time.Minute, 2000, 8
		var mu sync.Mutex
		admitted := 0
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += workers {
					ok, err := ho.Admit(e.ctx, heldOf(i), limit, span)
					if err != nil {
						t.Errorf("Admit %d = %v", i, err)
						return
					}
					if ok {
						mu.Lock()
						admitted++
						mu.Unlock()
					}
				}
			}()
		}
		wg.Wait()
		held, err := ho.Held(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if admitted != limit || admitted+len(held) != n {
			t.Errorf("admitted %d, held %d of %d; want %d admitted, the rest held", admitted, len(held), n, limit)
		}
	}},
	{"Closed", func(t *testing.T, e *env) {
		ho := e.holding()
		e.st.Close()
		if _, err := ho.Admit(e.ctx, heldOf(0), 1, time.Minute); err == nil {
			t.Errorf("Admit after Close = nil error")
		}
	}},
}

func heldOf(i int) store.Held {
	return store.Held{Jail: "dovecot", Subject: fmt.Sprintf("net:198.51.100.%d/32", i), BanTime: time.Hour, Reason: "auth-failure imap"}
}

func (e *env) holding() store.Holding {
	e.t.Helper()
	ho, ok := e.st.(store.Holding)
	if !ok {
		e.t.Fatalf("%T does not implement store.Holding", e.st)
	}
	return ho
}

func (e *env) admit(ho store.Holding, h store.Held, limit int, span time.Duration) bool {
	e.t.Helper()
	ok, err := ho.Admit(e.ctx, h, limit, span)
	if err != nil {
		e.t.Fatalf("Admit(%s) = %v", h.Subject, err)
	}
	return ok
}

func (e *env) drain(ho store.Holding, limit int, span time.Duration) ([]store.Held, int) {
	e.t.Helper()
	out, exp, err := ho.Drain(e.ctx, limit, span)
	if err != nil {
		e.t.Fatalf("Drain = %v", err)
	}
	return out, exp
}

func (e *env) rate(ho store.Holding, span time.Duration) int {
	e.t.Helper()
	n, err := ho.Rate(e.ctx, span)
	if err != nil {
		e.t.Fatalf("Rate = %v", err)
	}
	return n
}

func (e *env) wantHeld(ho store.Holding, want ...store.Held) {
	e.t.Helper()
	got, err := ho.Held(e.ctx)
	if err != nil || !sameHeld(got, want) {
		e.t.Errorf("Held = %s, %v; want %s", fmtHeld(got), err, fmtHeld(want))
	}
}

// sameHeld compares jail, subject, bantime and reason, in order (Held
// times are the store's).
func sameHeld(got, want []store.Held) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Jail != w.Jail || g.Subject != w.Subject || g.BanTime != w.BanTime || g.Reason != w.Reason || g.Held.IsZero() {
			return false
		}
	}
	return true
}

func fmtHeld(hs []store.Held) string {
	var b strings.Builder
	b.WriteString("[")
	for i, h := range hs {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s/%s/%v/%q", h.Jail, h.Subject, h.BanTime, h.Reason)
	}
	b.WriteString("]")
	return b.String()
}
