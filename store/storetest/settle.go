package storetest

import (
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// settleCases state store.Hit's Settle: the ban of a failure an earlier,
// count-only Hit counted (the blast-radius guard's), placed without
// counting the failure again.
var settleCases = []testCase{
	{"BansWithoutCounting", testSettleBans},
	{"IgnoresMember", testSettleMember},
	{"BelowThresholdDoesNotBan", testSettleBelow},
	{"NotTwiceAfterABan", testSettleAfterBan},
	{"MaxRetryOneBansEmptyWindow", testSettleEmpty},
	{"BanTimeZeroNeverBans", testSettleCountOnly},
	{"Escalates", testSettleEscalates},
}

// settleAfter counts MaxRetry failures of h without banning (BanTime 0),
// as the blast-radius guard does, and returns the Settle Hit of h.
func (e *env) settleAfter(h store.Hit) store.Hit {
	e.t.Helper()
	count := h
	count.BanTime = 0
	if r := e.hitN(count, h.MaxRetry); r.Count != h.MaxRetry {
		e.t.Fatalf("count-only Hits: Count %d, want %d", r.Count, h.MaxRetry)
	}
	h.Settle = true
	return h
}

func (e *env) wantTotals(jail string, failed, banned int64) {
	e.t.Helper()
	if got := e.stats(jail)[jail]; got.TotalFailed != failed || got.TotalBanned != banned {
		e.t.Errorf("Stats(%s) = %+v, want TotalFailed %d, TotalBanned %d", jail, got, failed, banned)
	}
}

func testSettleBans(t *testing.T, e *env) {
	h := e.settleAfter(hitFor("dovecot", "net:192.0.2.80/32"))
	r := e.hit(h)
	if r.Count != h.MaxRetry || r.Ban == nil {
		t.Fatalf("Settle Hit: Count %d, Ban %v; want Count %d (the window's), a ban", r.Count, r.Ban, h.MaxRetry)
	}
	now := e.now()
	want := store.Ban{Jail: h.Jail, Subject: h.Subject, Created: now, Expires: now.Add(h.BanTime), Nth: 1, Reason: h.Reason}
	if !sameBan(*r.Ban, want) {
		t.Errorf("Settle ban = %s, want %s", fmtBan(*r.Ban), fmtBan(want))
	}
	e.wantBans("Check bans", e.bansOn(h.Subject), []store.Ban{want})
	e.wantTotals(h.Jail, int64(h.MaxRetry), 1)
	if got := e.count(h.Jail, h.Subject, h.Span); got != 0 {
		t.Errorf("count after the Settle ban = %d, want 0 (a ban clears the window)", got)
	}
}

// A Settle Hit naming a member the window holds bans all the same.
func testSettleMember(t *testing.T, e *env) {
	h := hitFor("dovecot-user", "user:erin@example.org")
	h.MaxRetry = 3
	count := h
	count.BanTime = 0
	for _, m := range []string{"a", "b", "c"} {
		count.Member = m
		e.hit(count)
		e.clk.Advance(time.Millisecond)
	}
	h.Member, h.Settle = "c", true
	if r := e.hit(h); r.Count != 3 || r.Ban == nil {
		t.Errorf("Settle Hit with a member seen: Count %d, Ban %v; want Count 3, a ban", r.Count, r.Ban)
	}
	e.wantTotals(h.Jail, 3, 1)
}

func testSettleBelow(t *testing.T, e *env) {
	h := hitFor("dovecot", "net:192.0.2.81/32")
	count := h
	count.BanTime = 0
	e.hitN(count, h.MaxRetry-2)
	e.clk.Advance(time.Millisecond)
	h.Settle = true
	if r := e.hit(h); r.Count != h.MaxRetry-2 || r.Ban != nil {
		t.Errorf("Settle Hit on MaxRetry-2 failures: Count %d, Ban %v; want Count %d, no ban", r.Count, r.Ban, h.MaxRetry-2)
	}
	// Aged out: the window holds none.
	e.clk.Advance(h.Span)
	if r := e.hit(h); r.Count != 0 || r.Ban != nil {
		t.Errorf("Settle Hit after the failures aged out: Count %d, Ban %v; want Count 0, no ban", r.Count, r.Ban)
	}
	e.wantTotals(h.Jail, int64(h.MaxRetry-2), 0)
	if got := e.count(h.Jail, h.Subject, h.Span); got != 0 {
		t.Errorf("count = %d, want 0 (Settle records no failure)", got)
	}
}

// Two requests reach maxretry at once; one's ban clears the window, so the
// other's Settle Hit does not ban (nor escalate) again.
func testSettleAfterBan(t *testing.T, e *env) {
	h := recidiveHit("net:192.0.2.82/32")
	s := e.settleAfter(h)
	e.clk.Advance(time.Millisecond)
	first := e.hit(s)
	if first.Ban == nil {
		t.Fatalf("first Settle Hit: no ban")
	}
	e.clk.Advance(time.Millisecond)
	if r := e.hit(s); r.Count != 0 || r.Ban != nil {
		t.Errorf("second Settle Hit: Count %d, Ban %v; want Count 0, no ban", r.Count, r.Ban)
	}
	e.wantBans("Check bans", e.bansOn(h.Subject), []store.Ban{*first.Ban})
	e.wantTotals(h.Jail, int64(h.MaxRetry), 1)
}

// With MaxRetry 1 a Settle Hit bans whatever the window holds: a held
// ban released after its failures aged out.
func testSettleEmpty(t *testing.T, e *env) {
	h := hitFor("dovecot", "net:192.0.2.83/32")
	h.MaxRetry, h.Settle = 1, true
	r := e.hit(h)
	if r.Count != 0 || r.Ban == nil || r.Ban.Nth != 1 || r.Ban.Expires.Sub(r.Ban.Created) != h.BanTime {
		t.Fatalf("Settle Hit of MaxRetry 1 on no failure: Count %d, Ban %v; want Count 0, a first ban of %v", r.Count, r.Ban, h.BanTime)
	}
	e.wantTotals(h.Jail, 0, 1)
}

func testSettleCountOnly(t *testing.T, e *env) {
	h := e.settleAfter(hitFor("postfix-rate", "user:frank@example.org"))
	h.BanTime = 0
	if r := e.hit(h); r.Count != h.MaxRetry || r.Ban != nil {
		t.Errorf("Settle Hit with BanTime 0: Count %d, Ban %v; want Count %d, no ban", r.Count, r.Ban, h.MaxRetry)
	}
	e.wantTotals(h.Jail, int64(h.MaxRetry), 0)
}

// A Settle ban escalates as any and counts towards recidive: the bans of a
// subject, by Hit and by Settle in turn, are its first, second, third.
func testSettleEscalates(t *testing.T, e *env) {
	h := recidiveHit("net:192.0.2.84/32")
	e.banAfter(0, h, 1, time.Hour)
	e.clk.Advance(2 * time.Hour)
	s := e.settleAfter(h)
	r := e.hit(s)
	if r.Ban == nil || r.Ban.Nth != 2 || r.Ban.Expires.Sub(r.Ban.Created) != 2*time.Hour {
		t.Fatalf("second ban, by Settle: %v; want Nth 2, 2h", r.Ban)
	}
	e.banAfter(3*time.Hour, h, 3, 4*time.Hour)
	// Released after a wait, for less than its bantime: escalated too.
	e.clk.Advance(5 * time.Hour)
	rel := h
	rel.MaxRetry, rel.BanTime, rel.Settle = 1, 30*time.Minute, true
	r = e.hit(rel)
	if r.Ban == nil || r.Ban.Nth != 4 || r.Ban.Expires.Sub(r.Ban.Created) != 4*time.Hour {
		t.Errorf("fourth ban, by Settle of 30m: %v; want Nth 4, 4h (30m × 2³)", r.Ban)
	}
	e.wantTotals(h.Jail, int64(3*h.MaxRetry), 4)
}
