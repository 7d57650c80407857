// Package storetest is the conformance suite of store.Store. Every backend
// runs Run from its own tests, so the embedded store and the Redis store keep
// the same promises (README: "Jails", "The embedded store", "Several mail
// servers, one Redis"): sliding windows, bans, escalation,
// known devices, events.
package storetest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// Run runs the conformance suite against stores made by newStore.
//
// newStore must return a fresh, empty store whose clock is now. The suite's
// clock starts at the real time.Now(), truncated to the millisecond, and only
// moves forward, in whole milliseconds: a backend that sets real key TTLs from
// it never sees one in the past, and a backend that keeps millisecond
// precision compares times exactly. Boundaries are strict: a failure counts
// while its age is below Span, a ban is active while now is before Expires, a
// known device is known while now is before Remember's time plus ttl.
//
// Run closes every store when its subtest ends; a second Close (the caller's
// own cleanup) may return an error but must not panic. Subtests run one after
// another. Events are awaited for up to 5 seconds, so a backend may deliver
// them with some delay.
func Run(t *testing.T, newStore func(t *testing.T, now func() time.Time) store.Store) {
	groups := []struct {
		name  string
		cases []testCase
	}{
		{"Window", windowCases},
		{"Ban", banCases},
		{"Recidive", recidiveCases},
		{"Check", checkCases},
		{"Stats", statsCases},
		{"Watch", watchCases},
		{"Concurrency", concurrencyCases},
		{"Closed", closedCases},
		{"TOTP", totpCases},
		{"Sharing", sharingCases},
		{"Audit", auditCases},
		{"Holding", holdingCases},
		{"Settle", settleCases},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, c := range g.cases {
				t.Run(c.name, func(t *testing.T) {
					c.fn(t, newEnv(t, newStore))
				})
			}
		})
	}
}

type testCase struct {
	name string
	fn   func(t *testing.T, e *env)
}

// clock is the suite's fake clock. It only moves forward.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock {
	return &clock{now: time.Now().Truncate(time.Millisecond)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	if d < 0 || d%time.Millisecond != 0 {
		panic(fmt.Sprintf("storetest: clock.Advance(%v): must be a non-negative whole number of milliseconds", d))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is one subtest's store, clock and context.
type env struct {
	t   *testing.T
	ctx context.Context
	clk *clock
	st  store.Store
}

func newEnv(t *testing.T, newStore func(t *testing.T, now func() time.Time) store.Store) *env {
	clk := newClock()
	st := newStore(t, clk.Now)
	if st == nil {
		t.Fatal("newStore returned nil")
	}
	t.Cleanup(func() { _ = st.Close() })
	return &env{t: t, ctx: t.Context(), clk: clk, st: st}
}

func (e *env) now() time.Time { return e.clk.Now() }

func (e *env) hit(h store.Hit) store.HitResult {
	e.t.Helper()
	r, err := e.st.Hit(e.ctx, h)
	if err != nil {
		e.t.Fatalf("Hit(%s %s member=%q) = %v", h.Jail, h.Subject, h.Member, err)
	}
	return r
}

func (e *env) check(q store.Query) store.Answer {
	e.t.Helper()
	a, err := e.st.Check(e.ctx, q)
	if err != nil {
		e.t.Fatalf("Check(%+v) = %v", q, err)
	}
	return a
}

// count returns the failures in one window, read with Check.
func (e *env) count(jail string, subject store.Subject, span time.Duration) int {
	e.t.Helper()
	a := e.check(store.Query{Counts: []store.Window{{Jail: jail, Subject: subject, Span: span}}})
	if len(a.Counts) != 1 {
		e.t.Fatalf("Check with 1 window: got %d counts (%v), want 1", len(a.Counts), a.Counts)
	}
	return a.Counts[0]
}

// bansOn returns the active bans on subjects, read with Check.
func (e *env) bansOn(subjects ...store.Subject) []store.Ban {
	e.t.Helper()
	return e.check(store.Query{Subjects: subjects}).Bans
}

func (e *env) ban(b store.Ban) store.Ban {
	e.t.Helper()
	got, err := e.st.Ban(e.ctx, b)
	if err != nil {
		e.t.Fatalf("Ban(%s) = %v", fmtBan(b), err)
	}
	return got
}

func (e *env) unban(subject store.Subject) []store.Ban {
	e.t.Helper()
	got, err := e.st.Unban(e.ctx, subject)
	if err != nil {
		e.t.Fatalf("Unban(%s) = %v", subject, err)
	}
	return got
}

func (e *env) bans() []store.Ban {
	e.t.Helper()
	got, err := e.st.Bans(e.ctx)
	if err != nil {
		e.t.Fatalf("Bans() = %v", err)
	}
	return got
}

func (e *env) stats(jails ...string) map[string]store.JailStats {
	e.t.Helper()
	got, err := e.st.Stats(e.ctx, jails)
	if err != nil {
		e.t.Fatalf("Stats(%v) = %v", jails, err)
	}
	return got
}

// hitN records n failures of h, one millisecond apart, and fails the test if
// any of them bans. It returns the last result.
func (e *env) hitN(h store.Hit, n int) store.HitResult {
	e.t.Helper()
	var r store.HitResult
	for i := 0; i < n; i++ {
		if i > 0 {
			e.clk.Advance(time.Millisecond)
		}
		r = e.hit(h)
		if r.Ban != nil {
			e.t.Fatalf("Hit %d of %d (%s %s): banned (%s) before the end", i+1, n, h.Jail, h.Subject, fmtBan(*r.Ban))
		}
	}
	return r
}

// banBy records h.MaxRetry failures of h and returns the ban the last one
// makes; it fails the test if an earlier one bans or the last one does not.
func (e *env) banBy(h store.Hit) store.Ban {
	e.t.Helper()
	if h.MaxRetry > 1 {
		e.hitN(h, h.MaxRetry-1)
		e.clk.Advance(time.Millisecond)
	}
	r := e.hit(h)
	if r.Ban == nil {
		e.t.Fatalf("Hit %d of MaxRetry %d (%s %s): Count %d, no ban", h.MaxRetry, h.MaxRetry, h.Jail, h.Subject, r.Count)
	}
	if r.Count != h.MaxRetry {
		e.t.Errorf("banning Hit (%s %s): Count = %d, want MaxRetry %d", h.Jail, h.Subject, r.Count, h.MaxRetry)
	}
	return *r.Ban
}

// hitFor is the usual failure of the suite: maxretry 5, findtime 10m, bantime 1h.
func hitFor(jail string, subject store.Subject) store.Hit {
	return store.Hit{
		Jail: jail, Subject: subject, Span: 10 * time.Minute, MaxRetry: 5,
		BanTime: time.Hour, Reason: "auth-failure imap",
	}
}

func sameBan(a, b store.Ban) bool {
	return a.Jail == b.Jail && a.Subject == b.Subject && a.Created.Equal(b.Created) &&
		a.Expires.Equal(b.Expires) && a.Nth == b.Nth && a.Reason == b.Reason
}

func fmtBan(b store.Ban) string {
	return fmt.Sprintf("{%s %s created=%s expires=%s nth=%d reason=%q}", b.Jail, b.Subject,
		b.Created.UTC().Format(time.RFC3339Nano), b.Expires.UTC().Format(time.RFC3339Nano), b.Nth, b.Reason)
}

func fmtBans(bs []store.Ban) string {
	var s []string
	for _, b := range bs {
		s = append(s, fmtBan(b))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func sortBans(bs []store.Ban) []store.Ban {
	bs = slices.Clone(bs)
	slices.SortFunc(bs, func(a, b store.Ban) int {
		if c := strings.Compare(a.Subject, b.Subject); c != 0 {
			return c
		}
		return strings.Compare(a.Jail, b.Jail)
	})
	return bs
}

// sameBans compares two sets of bans, ignoring order.
func sameBans(got, want []store.Ban) bool {
	if len(got) != len(want) {
		return false
	}
	g, w := sortBans(got), sortBans(want)
	for i := range g {
		if !sameBan(g[i], w[i]) {
			return false
		}
	}
	return true
}

func (e *env) wantBans(what string, got, want []store.Ban) {
	e.t.Helper()
	if !sameBans(got, want) {
		e.t.Errorf("%s = %s, want %s", what, fmtBans(sortBans(got)), fmtBans(sortBans(want)))
	}
}
