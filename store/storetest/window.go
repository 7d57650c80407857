package storetest

import (
	"slices"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// windowCases state the sliding failure window: Hit, Count, Member, Reset.
var windowCases = []testCase{
	{"BelowMaxRetryDoesNotBan", testBelowMaxRetry},
	{"MaxRetryBans", testMaxRetryBans},
	{"OldFailuresStopCounting", testOldFailuresStopCounting},
	{"SlidingNotBuckets", testSliding},
	{"CountSaturates", testCountSaturates},
	{"SaturatedWindowKeepsNewest", testSaturatedKeepsNewest},
	{"BanClearsWindow", testBanClearsWindow},
	{"BanTimeZeroNeverBans", testCountOnly},
	{"MemberCountsOnce", testMember},
	{"MemberAgainNeitherCountsNorMoves", testMemberAgain},
	{"JailsAndSubjectsApart", testWindowsApart},
	{"Reset", testReset},
}

func testBelowMaxRetry(t *testing.T, e *env) {
	h := hitFor("dovecot", "net:192.0.2.1/32")
	for i := 1; i < h.MaxRetry; i++ {
		r := e.hit(h)
		if r.Count != i || r.Ban != nil {
			t.Fatalf("Hit %d: Count %d, Ban %v; want Count %d, no ban", i, r.Count, r.Ban, i)
		}
		e.clk.Advance(time.Second)
	}
	if got := e.count(h.Jail, h.Subject, h.Span); got != h.MaxRetry-1 {
		t.Errorf("Check count = %d, want %d", got, h.MaxRetry-1)
	}
	if got := e.bansOn(h.Subject); len(got) != 0 {
		t.Errorf("Check bans after MaxRetry-1 failures = %s, want none", fmtBans(got))
	}
}

func testMaxRetryBans(t *testing.T, e *env) {
	h := hitFor("dovecot", "net:192.0.2.2/32")
	e.hitN(h, h.MaxRetry-1)
	e.clk.Advance(9 * time.Minute) // the first failure is 9m old: still inside findtime
	r := e.hit(h)
	if r.Count != h.MaxRetry {
		t.Errorf("Hit %d: Count = %d, want %d", h.MaxRetry, r.Count, h.MaxRetry)
	}
	if r.Ban == nil {
		t.Fatalf("Hit %d of MaxRetry %d: no ban", h.MaxRetry, h.MaxRetry)
	}
	now := e.now()
	want := store.Ban{Jail: h.Jail, Subject: h.Subject, Created: now, Expires: now.Add(h.BanTime), Nth: 1, Reason: h.Reason}
	if !sameBan(*r.Ban, want) {
		t.Errorf("Hit ban = %s, want %s", fmtBan(*r.Ban), fmtBan(want))
	}
	e.wantBans("Check bans", e.bansOn(h.Subject), []store.Ban{want})
	e.wantBans("Bans()", e.bans(), []store.Ban{want})
}

func testOldFailuresStopCounting(t *testing.T, e *env) {
	h := hitFor("dovecot", "net:192.0.2.3/32")
	e.hit(h)
	e.clk.Advance(h.Span - time.Millisecond)
	if got := e.count(h.Jail, h.Subject, h.Span); got != 1 {
		t.Errorf("count of a failure Span-1ms old = %d, want 1", got)
	}
	e.clk.Advance(time.Millisecond)
	if got := e.count(h.Jail, h.Subject, h.Span); got != 0 {
		t.Errorf("count of a failure Span old = %d, want 0", got)
	}

	// MaxRetry-1 old failures and one new one do not ban.
	e.hitN(h, h.MaxRetry-1)
	e.clk.Advance(h.Span)
	r := e.hit(h)
	if r.Count != 1 || r.Ban != nil {
		t.Errorf("Hit after the others aged out: Count %d, Ban %v; want Count 1, no ban", r.Count, r.Ban)
	}
}

// testSliding fails a store that counts in fixed buckets, or that starts a
// window at the first failure and expires it as a whole.
func testSliding(t *testing.T, e *env) {
	h := hitFor("dovecot", "net:192.0.2.4/32")
	h.MaxRetry = 3
	steps := []struct {
		at        time.Duration // since the first failure
		wantCount int
		wantBan   bool
	}{
		{0, 1, false},
		{9 * time.Minute, 2, false},
		{11 * time.Minute, 2, false}, // the first one aged out
		{13 * time.Minute, 3, true},  // 9m, 11m, 13m: three within 10m
	}
	start := e.now()
	for _, s := range steps {
		e.clk.Advance(start.Add(s.at).Sub(e.now()))
		r := e.hit(h)
		if r.Count != s.wantCount || (r.Ban != nil) != s.wantBan {
			t.Errorf("Hit at +%v: Count %d, banned %v; want Count %d, banned %v", s.at, r.Count, r.Ban != nil, s.wantCount, s.wantBan)
		}
	}
}

func testCountSaturates(t *testing.T, e *env) {
	h := hitFor("postfix-rate", "user:alice@example.org")
	h.MaxRetry, h.BanTime = 3, 0
	for i, want := range []int{1, 2, 3, 4, 4, 4, 4} {
		if r := e.hit(h); r.Count != want {
			t.Errorf("Hit %d: Count = %d, want %d (saturating at MaxRetry+1)", i+1, r.Count, want)
		}
	}
	if got := e.count(h.Jail, h.Subject, h.Span); got != h.MaxRetry+1 {
		t.Errorf("Check count = %d, want %d", got, h.MaxRetry+1)
	}
}

// testSaturatedKeepsNewest: a full window drops its oldest failures, so a
// sender that keeps pushing stays over the limit.
func testSaturatedKeepsNewest(t *testing.T, e *env) {
	h := hitFor("postfix-rate", "user:bob@example.org")
	h.MaxRetry, h.BanTime = 3, 0
	e.hit(h)
	e.hit(h)
	e.clk.Advance(5 * time.Minute)
	for range 4 {
		e.hit(h)
	}
	e.clk.Advance(5 * time.Minute) // the first two aged out, the last four did not
	if got := e.count(h.Jail, h.Subject, h.Span); got != 4 {
		t.Errorf("count after the oldest of a full window aged out = %d, want 4", got)
	}
	if r := e.hit(h); r.Count != 4 {
		t.Errorf("Hit: Count = %d, want 4", r.Count)
	}
}

func testBanClearsWindow(t *testing.T, e *env) {
	h := hitFor("dovecot", "net:192.0.2.5/32")
	e.banBy(h)
	if got := e.count(h.Jail, h.Subject, h.Span); got != 0 {
		t.Errorf("count after the ban = %d, want 0", got)
	}
	e.clk.Advance(time.Second)
	if r := e.hit(h); r.Count != 1 || r.Ban != nil {
		t.Errorf("Hit after the ban: Count %d, Ban %v; want Count 1, no ban", r.Count, r.Ban)
	}
}

func testCountOnly(t *testing.T, e *env) {
	h := hitFor("postfix-rate", "user:carol@example.org")
	h.MaxRetry, h.BanTime = 2, 0
	h.Recidive = store.Recidive{Window: 24 * time.Hour, Factor: 2}
	for i := range 10 {
		r := e.hit(h)
		if r.Ban != nil {
			t.Fatalf("Hit %d with BanTime 0: banned %s", i+1, fmtBan(*r.Ban))
		}
		if want := min(i+1, h.MaxRetry+1); r.Count != want {
			t.Errorf("Hit %d: Count = %d, want %d", i+1, r.Count, want)
		}
	}
	if got := e.bansOn(h.Subject); len(got) != 0 {
		t.Errorf("Check bans with BanTime 0 = %s, want none", fmtBans(got))
	}
	if got := e.bans(); len(got) != 0 {
		t.Errorf("Bans() with BanTime 0 = %s, want none", fmtBans(got))
	}
	if got := e.stats(h.Jail)[h.Jail]; got.TotalBanned != 0 || got.TotalFailed != 10 {
		t.Errorf("Stats = %+v, want TotalFailed 10, TotalBanned 0", got)
	}
}

func testMember(t *testing.T, e *env) {
	h := hitFor("dovecot-user", "user:dave@example.org")
	h.MaxRetry = 3
	steps := []struct {
		at        time.Duration
		member    string
		wantCount int
		wantBan   bool
	}{
		{0, "a", 1, false},
		{0, "a", 1, false}, // same password again: counts once
		{time.Minute, "a", 1, false},
		{time.Minute, "b", 2, false},
		{10 * time.Minute, "a", 2, false},                    // a aged out (10m old) and counts again; b is live
		{10*time.Minute + 1*time.Millisecond, "b", 2, false}, // b (9m old) still counts once
		{10*time.Minute + 2*time.Millisecond, "c", 3, true},  // a, b, c: three distinct within 10m
		{10*time.Minute + 3*time.Millisecond, "c", 1, false}, // the ban cleared the window
		{10*time.Minute + 4*time.Millisecond, "", 2, false},  // empty: every hit counts
		{10*time.Minute + 5*time.Millisecond, "", 3, true},
	}
	start := e.now()
	for _, s := range steps {
		at := start.Add(s.at)
		e.clk.Advance(at.Sub(e.now()))
		h.Member = s.member
		r := e.hit(h)
		if r.Count != s.wantCount || (r.Ban != nil) != s.wantBan {
			t.Errorf("Hit at +%v member %q: Count %d, banned %v; want Count %d, banned %v",
				at.Sub(start), s.member, r.Count, r.Ban != nil, s.wantCount, s.wantBan)
		}
	}
}

func testWindowsApart(t *testing.T, e *env) {
	a := hitFor("dovecot", "net:192.0.2.6/32")
	b := hitFor("postfix", "net:192.0.2.6/32")
	c := hitFor("dovecot", "net:192.0.2.7/32")
	e.hitN(a, 3)
	e.hitN(b, 2)
	if r := e.hit(c); r.Count != 1 {
		t.Errorf("Hit of another subject: Count = %d, want 1", r.Count)
	}
	got := e.check(store.Query{Counts: []store.Window{
		{Jail: b.Jail, Subject: b.Subject, Span: b.Span},
		{Jail: "nosuchjail", Subject: a.Subject, Span: a.Span},
		{Jail: a.Jail, Subject: a.Subject, Span: a.Span},
		{Jail: c.Jail, Subject: c.Subject, Span: c.Span},
	}}).Counts
	want := []int{2, 0, 3, 1}
	if !slices.Equal(got, want) {
		t.Errorf("Check counts = %v, want %v (in query order)", got, want)
	}
}

func testReset(t *testing.T, e *env) {
	h := hitFor("dovecot", "user+net:erin@example.org|198.51.100.0/24")
	other := hitFor("postfix", h.Subject)
	e.hitN(h, 3)
	e.hitN(other, 2)
	if err := e.st.Reset(e.ctx, h.Jail, h.Subject); err != nil {
		t.Fatalf("Reset = %v", err)
	}
	if got := e.count(h.Jail, h.Subject, h.Span); got != 0 {
		t.Errorf("count after Reset = %d, want 0", got)
	}
	if got := e.count(other.Jail, other.Subject, other.Span); got != 2 {
		t.Errorf("count in another jail after Reset = %d, want 2 (untouched)", got)
	}
	if r := e.hit(h); r.Count != 1 {
		t.Errorf("Hit after Reset: Count = %d, want 1", r.Count)
	}
	if err := e.st.Reset(e.ctx, "dovecot", "net:203.0.113.99/32"); err != nil {
		t.Errorf("Reset of a subject without failures = %v, want nil", err)
	}
}

// A member seen again inside the window is not a failure: TotalFailed
// stays, and the member keeps its first time, ageing out from there.
func testMemberAgain(t *testing.T, e *env) {
	h := hitFor("dovecot-user", "user:gail@example.org")
	h.MaxRetry, h.Member = 3, "a"
	e.hit(h)
	e.clk.Advance(5 * time.Minute)
	if r := e.hit(h); r.Count != 1 || r.Ban != nil {
		t.Errorf("the same member again: Count %d, Ban %v; want Count 1, no ban", r.Count, r.Ban)
	}
	if got := e.stats(h.Jail)[h.Jail]; got.TotalFailed != 1 {
		t.Errorf("TotalFailed after the same member twice = %d, want 1", got.TotalFailed)
	}
	e.clk.Advance(h.Span - 5*time.Minute)
	if got := e.count(h.Jail, h.Subject, h.Span); got != 0 {
		t.Errorf("count Span after the member's first failure = %d, want 0 (it ages out from its first time)", got)
	}
}
