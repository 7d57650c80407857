package storetest

import (
	"maps"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// sharingCases hold every backend to store.Sharing, which guard's shared
// address rule relies on.
var sharingCases = []testCase{
	{"DistinctMembers", func(t *testing.T, e *env) {
		sh := e.sharing()
		const sub, span, limit = "net:192.0.2.10/32", time.Hour, 3
		for i, tc := range []struct {
			member string
			want   int
		}{
			{"alice@example.org", 1}, {"alice@example.org", 1}, {"bob@example.org", 2},
			{"carol@example.org", 3}, {"dave@example.org", 3}, // saturates at limit
		} {
			e.clk.Advance(time.Millisecond)
			got, err := sh.Share(e.ctx, sub, tc.member, span, limit)
			if err != nil || got != tc.want {
				t.Fatalf("Share %d (%s) = %d, %v; want %d", i, tc.member, got, err, tc.want)
			}
		}
		if got, err := sh.Sharers(e.ctx, sub, span); err != nil || got != limit {
			t.Errorf("Sharers = %d, %v; want %d", got, err, limit)
		}
		if got, err := sh.Sharers(e.ctx, "net:192.0.2.11/32", span); err != nil || got != 0 {
			t.Errorf("Sharers(unknown) = %d, %v; want 0", got, err)
		}
	}},
	{"Aging", func(t *testing.T, e *env) {
		sh := e.sharing()
		const sub, span, limit = "net:2001:db8:1::/64", 10 * time.Minute, 5
		e.share(sh, sub, "alice", span, limit)
		e.clk.Advance(time.Minute)
		e.share(sh, sub, "bob", span, limit)
		e.clk.Advance(span - time.Minute - time.Millisecond) // alice's age: span − 1ms
		if got := e.sharers(sh, sub, span); got != 2 {
			t.Errorf("alice at age span−1ms: Sharers = %d, want 2", got)
		}
		e.clk.Advance(time.Millisecond) // alice's age: span
		if got := e.sharers(sh, sub, span); got != 1 {
			t.Errorf("alice at age span: Sharers = %d, want 1", got)
		}
		// Seen again, alice counts again from now.
		if got := e.share(sh, sub, "alice", span, limit); got != 2 {
			t.Errorf("alice again: Share = %d, want 2", got)
		}
	}},
	{"Shared", func(t *testing.T, e *env) {
		sh := e.sharing()
		const span, limit = time.Hour, 2
		web, home := "net:192.0.2.80/32", "net:198.51.100.7/32"
		e.share(sh, web, "alice", span, limit)
		e.share(sh, web, "bob", span, limit)
		e.share(sh, home, "carol", span, limit)
		got, err := sh.Shared(e.ctx, span, limit)
		if want := map[string]int{web: 2}; err != nil || !maps.Equal(got, want) {
			t.Errorf("Shared = %v, %v; want %v", got, err, want)
		}
		e.clk.Advance(span)
		if got, err := sh.Shared(e.ctx, span, limit); err != nil || len(got) != 0 {
			t.Errorf("Shared after span = %v, %v; want none", got, err)
		}
	}},
	{"Closed", func(t *testing.T, e *env) {
		sh := e.sharing()
		e.st.Close()
		if _, err := sh.Share(e.ctx, "net:192.0.2.1/32", "alice", time.Hour, 2); err == nil {
			t.Errorf("Share after Close = nil error")
		}
	}},
}

func (e *env) sharing() store.Sharing {
	e.t.Helper()
	sh, ok := e.st.(store.Sharing)
	if !ok {
		e.t.Fatalf("%T does not implement store.Sharing", e.st)
	}
	return sh
}

func (e *env) share(sh store.Sharing, sub, member string, span time.Duration, limit int) int {
	e.t.Helper()
	n, err := sh.Share(e.ctx, sub, member, span, limit)
	if err != nil {
		e.t.Fatalf("Share(%s, %s) = %v", sub, member, err)
	}
	return n
}

func (e *env) sharers(sh store.Sharing, sub string, span time.Duration) int {
	e.t.Helper()
	n, err := sh.Sharers(e.ctx, sub, span)
	if err != nil {
		e.t.Fatalf("Sharers(%s) = %v", sub, err)
	}
	return n
}
