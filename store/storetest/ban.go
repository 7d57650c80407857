package storetest

import (
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// banCases state Ban, Unban and Bans.
var banCases = []testCase{
	{"ManualCreatedDefaultsToNow", testManualBan},
	{"ManualKeepsCreated", testManualKeepsCreated},
	{"ManualReplaces", testManualReplaces},
	{"ExpiresAtExpires", testBanExpires},
	{"BansListsActiveOnly", testBansActiveOnly},
	{"UnbanLiftsEveryJail", testUnban},
	{"UnbanNothing", testUnbanNothing},
}

// recidiveCases state escalation: the k-th ban within the window.
var recidiveCases = []testCase{
	{"Escalates", testRecidiveEscalates},
	{"SlidingWindow", testRecidiveSliding},
	{"ResetsOutsideWindow", testRecidiveResets},
	{"ZeroWindowNeverEscalates", testRecidiveDisabled},
	{"ManualBanCounts", testRecidiveManual},
	{"PerJailAndSubject", testRecidiveApart},
}

// checkCases state Check: bans on any subject, known devices.
var checkCases = []testCase{
	{"BansOnAnySubject", testCheckAnySubject},
	{"Empty", testCheckEmpty},
	{"KnownAfterRemember", testKnown},
}

func testManualBan(t *testing.T, e *env) {
	now := e.now()
	b := store.Ban{Jail: "manual", Subject: "net:203.0.113.1/32", Expires: now.Add(30 * time.Minute), Reason: "manual"}
	got := e.ban(b)
	want := b
	want.Created = now
	if got.Jail != want.Jail || got.Subject != want.Subject || !got.Created.Equal(want.Created) ||
		!got.Expires.Equal(want.Expires) || got.Reason != want.Reason {
		t.Errorf("Ban(%s) = %s, want %s (Nth aside)", fmtBan(b), fmtBan(got), fmtBan(want))
	}
	if got.Nth != 1 {
		t.Errorf("first Ban: Nth = %d, want 1", got.Nth)
	}
	e.wantBans("Check bans", e.bansOn(b.Subject), []store.Ban{got})
	e.wantBans("Bans()", e.bans(), []store.Ban{got})
	if st := e.stats("manual")["manual"]; st.TotalBanned != 1 {
		t.Errorf("Stats(manual).TotalBanned = %d, want 1", st.TotalBanned)
	}
}

func testManualKeepsCreated(t *testing.T, e *env) {
	now := e.now()
	b := store.Ban{Jail: "postfix", Subject: "net:203.0.113.2/32", Created: now.Add(-5 * time.Minute),
		Expires: now.Add(time.Hour), Reason: "manual"}
	got := e.ban(b)
	if !got.Created.Equal(b.Created) || !got.Expires.Equal(b.Expires) {
		t.Errorf("Ban(%s) = %s, want Created and Expires kept", fmtBan(b), fmtBan(got))
	}
}

func testManualReplaces(t *testing.T, e *env) {
	now := e.now()
	s := store.Subject("user:frank@example.org")
	e.ban(store.Ban{Jail: "manual", Subject: s, Expires: now.Add(time.Hour), Reason: "first"})
	e.clk.Advance(time.Minute)
	second := e.ban(store.Ban{Jail: "manual", Subject: s, Expires: now.Add(3 * time.Hour), Reason: "second"})
	got := e.bansOn(s)
	if len(got) != 1 || got[0].Reason != "second" || !got[0].Expires.Equal(now.Add(3*time.Hour)) {
		t.Errorf("Check bans after a second Ban in the same jail = %s, want only %s", fmtBans(got), fmtBan(second))
	}
	if got := e.bans(); len(got) != 1 {
		t.Errorf("Bans() after a second Ban in the same jail = %s, want one ban", fmtBans(got))
	}
}

func testBanExpires(t *testing.T, e *env) {
	h := hitFor("dovecot", "net:192.0.2.10/32")
	b := e.banBy(h)
	e.clk.Advance(b.Expires.Sub(e.now()) - time.Millisecond)
	if got := e.bansOn(h.Subject); len(got) != 1 {
		t.Errorf("Check bans 1ms before Expires = %s, want the ban", fmtBans(got))
	}
	e.clk.Advance(time.Millisecond)
	if got := e.bansOn(h.Subject); len(got) != 0 {
		t.Errorf("Check bans at Expires = %s, want none", fmtBans(got))
	}
	if got := e.bans(); len(got) != 0 {
		t.Errorf("Bans() at Expires = %s, want none", fmtBans(got))
	}
}

func testBansActiveOnly(t *testing.T, e *env) {
	now := e.now()
	short := e.ban(store.Ban{Jail: "manual", Subject: "net:203.0.113.3/32", Expires: now.Add(10 * time.Minute), Reason: "manual"})
	long := e.ban(store.Ban{Jail: "manual", Subject: "net:203.0.113.4/32", Expires: now.Add(2 * time.Hour), Reason: "manual"})
	hit := e.banBy(hitFor("dovecot", "net:203.0.113.4/32"))
	e.wantBans("Bans()", e.bans(), []store.Ban{short, long, hit})
	e.clk.Advance(10 * time.Minute)
	e.wantBans("Bans() after the short ban expired", e.bans(), []store.Ban{long, hit})
}

func testUnban(t *testing.T, e *env) {
	s := store.Subject("net:198.51.100.0/24")
	a := e.banBy(hitFor("dovecot", s))
	b := e.ban(store.Ban{Jail: "manual", Subject: s, Expires: e.now().Add(time.Hour), Reason: "manual"})
	other := e.ban(store.Ban{Jail: "manual", Subject: "net:198.51.101.0/24", Expires: e.now().Add(time.Hour), Reason: "manual"})
	e.clk.Advance(time.Second)

	e.wantBans("Unban", e.unban(s), []store.Ban{a, b})
	if got := e.bansOn(s); len(got) != 0 {
		t.Errorf("Check bans after Unban = %s, want none", fmtBans(got))
	}
	e.wantBans("Bans() after Unban", e.bans(), []store.Ban{other})
	got := e.unban(s)
	if got == nil || len(got) != 0 {
		t.Errorf("second Unban = %#v, want an empty, non-nil slice", got)
	}
}

func testUnbanNothing(t *testing.T, e *env) {
	got := e.unban("user:nobody@example.org")
	if got == nil || len(got) != 0 {
		t.Errorf("Unban of a subject never banned = %#v, want an empty, non-nil slice", got)
	}
	b := e.ban(store.Ban{Jail: "manual", Subject: "user:gone@example.org", Expires: e.now().Add(time.Minute), Reason: "manual"})
	e.clk.Advance(time.Minute)
	if got := e.unban(b.Subject); len(got) != 0 {
		t.Errorf("Unban of an expired ban = %s, want none", fmtBans(got))
	}
}

func recidiveHit(subject store.Subject) store.Hit {
	h := hitFor("dovecot", subject)
	h.MaxRetry = 2
	h.Recidive = store.Recidive{Window: 24 * time.Hour, Factor: 2, MaxTime: 5 * time.Hour}
	return h
}

// banAfter moves the clock by d, bans with h, and checks the ban's Nth and
// duration.
func (e *env) banAfter(d time.Duration, h store.Hit, wantNth int, wantTTL time.Duration) store.Ban {
	e.t.Helper()
	e.clk.Advance(d)
	b := e.banBy(h)
	if b.Nth != wantNth || b.Expires.Sub(b.Created) != wantTTL {
		e.t.Errorf("ban %s: Nth %d, lasts %v; want Nth %d, lasts %v", fmtBan(b), b.Nth, b.Expires.Sub(b.Created), wantNth, wantTTL)
	}
	if !b.Created.Equal(e.now()) {
		e.t.Errorf("ban %s: Created is not now (%s)", fmtBan(b), e.now().UTC().Format(time.RFC3339Nano))
	}
	return b
}

func testRecidiveEscalates(t *testing.T, e *env) {
	h := recidiveHit("net:192.0.2.20/32")
	e.banAfter(0, h, 1, time.Hour)
	e.banAfter(2*time.Hour, h, 2, 2*time.Hour)
	e.banAfter(3*time.Hour, h, 3, 4*time.Hour)
	e.banAfter(5*time.Hour, h, 4, 5*time.Hour) // 8h, capped at MaxTime
}

func testRecidiveSliding(t *testing.T, e *env) {
	h := recidiveHit("net:192.0.2.21/32")
	e.banAfter(0, h, 1, time.Hour)
	e.banAfter(20*time.Hour, h, 2, 2*time.Hour)
	// The first ban is 25h old, outside the window; the second is 5h old.
	e.banAfter(5*time.Hour, h, 2, 2*time.Hour)
}

func testRecidiveResets(t *testing.T, e *env) {
	h := recidiveHit("net:192.0.2.22/32")
	e.banAfter(0, h, 1, time.Hour)
	e.banAfter(2*time.Hour, h, 2, 2*time.Hour)
	e.banAfter(h.Recidive.Window, h, 1, time.Hour)
}

func testRecidiveDisabled(t *testing.T, e *env) {
	h := recidiveHit("net:192.0.2.23/32")
	h.Recidive = store.Recidive{}
	e.banAfter(0, h, 1, time.Hour)
	e.banAfter(2*time.Hour, h, 1, time.Hour)
	e.banAfter(2*time.Hour, h, 1, time.Hour)
}

func testRecidiveManual(t *testing.T, e *env) {
	h := recidiveHit("net:192.0.2.24/32")
	e.ban(store.Ban{Jail: h.Jail, Subject: h.Subject, Expires: e.now().Add(time.Hour), Reason: "manual"})
	e.banAfter(2*time.Hour, h, 2, 2*time.Hour)
}

func testRecidiveApart(t *testing.T, e *env) {
	h := recidiveHit("net:192.0.2.25/32")
	e.banAfter(0, h, 1, time.Hour)
	otherJail := h
	otherJail.Jail = "postfix"
	e.banAfter(time.Minute, otherJail, 1, time.Hour)
	otherSubject := recidiveHit("net:192.0.2.26/32")
	e.banAfter(time.Minute, otherSubject, 1, time.Hour)
	e.banAfter(2*time.Hour, h, 2, 2*time.Hour)
}

func testCheckAnySubject(t *testing.T, e *env) {
	ip, user, free := store.Subject("net:192.0.2.30/32"), store.Subject("user:gina@example.org"), store.Subject("net:192.0.2.31/32")
	a := e.banBy(hitFor("dovecot", ip))
	b := e.ban(store.Ban{Jail: "dovecot-user", Subject: user, Expires: e.now().Add(2 * time.Hour), Reason: "manual"})
	c := e.ban(store.Ban{Jail: "postfix", Subject: ip, Expires: e.now().Add(30 * time.Minute), Reason: "manual"})

	tests := []struct {
		name     string
		subjects []store.Subject
		want     []store.Ban
	}{
		{"one subject, two jails", []store.Subject{ip}, []store.Ban{a, c}},
		{"the other subject", []store.Subject{free, user}, []store.Ban{b}},
		{"all", []store.Subject{user, free, ip}, []store.Ban{a, b, c}},
		{"none banned", []store.Subject{free, "user:nobody@example.org"}, nil},
	}
	for _, tt := range tests {
		e.wantBans("Check bans of "+tt.name, e.bansOn(tt.subjects...), tt.want)
	}
	e.clk.Advance(30 * time.Minute)
	e.wantBans("Check bans after one expired", e.bansOn(ip, user), []store.Ban{a, b})
}

func testCheckEmpty(t *testing.T, e *env) {
	a := e.check(store.Query{})
	if len(a.Bans) != 0 || a.Known || len(a.Counts) != 0 {
		t.Errorf("Check of an empty query = %+v, want the zero Answer", a)
	}
}

func testKnown(t *testing.T, e *env) {
	key := "user+net:hana@example.org|2001:db8:1::/64"
	known := func() bool {
		t.Helper()
		return e.check(store.Query{Known: key}).Known
	}
	if known() {
		t.Errorf("Known before Remember = true, want false")
	}
	if err := e.st.Remember(e.ctx, key, time.Hour); err != nil {
		t.Fatalf("Remember = %v", err)
	}
	if !known() {
		t.Errorf("Known after Remember = false, want true")
	}
	if e.check(store.Query{Known: "user+net:hana@example.org|2001:db8:2::/64"}).Known {
		t.Errorf("Known of another key = true, want false")
	}
	e.clk.Advance(time.Hour - time.Millisecond)
	if !known() {
		t.Errorf("Known 1ms before its TTL = false, want true")
	}
	e.clk.Advance(time.Millisecond)
	if known() {
		t.Errorf("Known at its TTL = true, want false")
	}
	// Remembering again starts a new TTL.
	if err := e.st.Remember(e.ctx, key, time.Hour); err != nil {
		t.Fatalf("Remember = %v", err)
	}
	e.clk.Advance(30 * time.Minute)
	if err := e.st.Remember(e.ctx, key, time.Hour); err != nil {
		t.Fatalf("Remember = %v", err)
	}
	e.clk.Advance(59 * time.Minute)
	if !known() {
		t.Errorf("Known 59m after a second Remember for 1h = false, want true")
	}
}
