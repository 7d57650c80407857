package filter

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// A session-id filter in the style of fail2ban's sshd.conf: the host is on
// the connect line only; the failure lines name the session, not the host.
const sessionFilter = `[Definition]
prefregex = ^\s*app: session <F-MLFID>\d+</F-MLFID>: <F-CONTENT>.+</F-CONTENT>$
failregex = ^<F-NOFAIL>connect</F-NOFAIL> from <ADDR>$
            ^auth failed user=<F-USER>\S+</F-USER>$
            ^<F-NOFAIL><F-MLFFORGET>disconnect</F-MLFFORGET></F-NOFAIL>$
            ^<F-MLFFORGET><F-MLFGAINED>logged in</F-MLFGAINED></F-MLFFORGET> user=<F-USER>\S+</F-USER>$
datepattern = {^LN-BEG}
`

func TestTrackerSessions(t *testing.T) {
	f := mustLoad(t, sessionFilter, "")
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	type want struct {
		host, user string
	}
	for _, tc := range []struct {
		name  string
		lines []string
		want  [][]want // per line, the failures
	}{
		{"host from the connect line, each failure once",
			[]string{
				"Nov 29 09:00:00 app: session 7: connect from 192.0.2.7",
				"Nov 29 09:00:01 app: session 7: auth failed user=bob",
				"Nov 29 09:00:02 app: session 8: connect from 192.0.2.8",
				"Nov 29 09:00:03 app: session 7: auth failed user=bob",
				"Nov 29 09:00:04 app: session 7: disconnect",
				"Nov 29 09:00:05 app: session 7: auth failed user=bob",
			},
			[][]want{nil, {{"192.0.2.7", "bob"}}, nil, {{"192.0.2.7", "bob"}}, nil, nil}},
		{"host on a later line completes the pending failure",
			[]string{
				"Nov 29 09:00:01 app: session 9: auth failed user=carol",
				"Nov 29 09:00:02 app: session 9: connect from 2001:db8::9",
			},
			[][]want{nil, {{"2001:db8::9", "carol"}}}},
		{"a second user in one session is a failure (the last user named)",
			[]string{
				"Nov 29 09:00:00 app: session 3: connect from 192.0.2.3",
				"Nov 29 09:00:01 app: session 3: auth failed user=a",
				"Nov 29 09:00:02 app: session 3: auth failed user=b",
			},
			[][]want{nil, {{"192.0.2.3", "a"}}, {{"192.0.2.3", "b"}}}},
		{"a successful login ends the session without a failure",
			[]string{
				"Nov 29 09:00:00 app: session 4: connect from 192.0.2.4",
				"Nov 29 09:00:01 app: session 4: logged in user=dave",
				"Nov 29 09:00:02 app: session 4: auth failed user=dave",
			},
			[][]want{nil, nil, nil}},
		{"an id forged by another session is not joined",
			[]string{
				"Nov 29 09:00:00 app: session 5: connect from 192.0.2.5",
				"Nov 29 09:00:01 app: session 6: auth failed user=session 5: connect from 1.2.3.4",
			},
			[][]want{nil, nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := f.NewTracker()
			for i, l := range tc.lines {
				got := tr.Line(l, now)
				if len(got) != len(tc.want[i]) {
					t.Fatalf("line %d %q: %d failures %+v, want %d", i+1, l, len(got), got, len(tc.want[i]))
				}
				for j, w := range tc.want[i] {
					if got[j].Host != netip.MustParseAddr(w.host) || got[j].User != w.user {
						t.Errorf("line %d: failure %+v, want host %s user %s", i+1, got[j], w.host, w.user)
					}
					if got[j].Time.Day() != 29 || got[j].Time.Hour() != 9 {
						t.Errorf("line %d: time %v, want the line's date", i+1, got[j].Time)
					}
				}
			}
		})
	}
}

// fail2ban-regex's view of the same session: the connect and disconnect
// lines are ignored (<F-NOFAIL>), a failure waiting for its host counts as
// matched.
func TestRegexTrackerCounts(t *testing.T) {
	f := mustLoad(t, sessionFilter, "")
	tr := f.NewRegexTracker()
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	var got []string
	for _, l := range []string{
		"Nov 29 09:00:00 app: session 7: connect from 192.0.2.7",
		"Nov 29 09:00:01 app: session 7: auth failed user=bob",
		"Nov 29 09:00:02 app: session 9: auth failed user=carol",
		"Nov 29 09:00:03 app: other line",
		"Nov 29 09:00:04 app: session 7: disconnect",
	} {
		r := tr.Examine(l, now)
		got = append(got, fmt.Sprintf("%d%v", r.Outcome, r.Hits))
	}
	if s, want := strings.Join(got, " "), "1[0] 2[1] 2[1] 0[] 1[2]"; s != want {
		t.Errorf("outcomes %s, want %s", s, want)
	}
}

func TestTrackerBounded(t *testing.T) {
	f := mustLoad(t, sessionFilter, "")
	tr := f.NewTracker()
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	for i := range MaxTracked + 50 {
		tr.Line(fmt.Sprintf("app: session %d: connect from 192.0.2.1", i), now)
	}
	if n := tr.Sessions(); n != MaxTracked {
		t.Errorf("%d sessions tracked, want the cap %d", n, MaxTracked)
	}
	// the oldest were dropped: session 0's failure has no host any more
	if got := tr.Line("app: session 0: auth failed user=x", now); len(got) != 0 {
		t.Errorf("dropped session still joined: %+v", got)
	}
	if got := tr.Line(fmt.Sprintf("app: session %d: auth failed user=x", MaxTracked+49), now); len(got) != 1 {
		t.Errorf("newest session not joined: %+v", got)
	}
	// a session keeps short copies, not the line
	tr.Line("app: session 0: auth failed user="+strings.Repeat("u", 10000), now)
	for k, v := range tr.t.ml.m["0"].Value.(*mlSession).g {
		if len(v) > maxSessionValue {
			t.Errorf("session 0 keeps %s of %d bytes", k, len(v))
		}
	}
	// expiry: after TrackTTL every session is gone
	tr.Line("app: session 1: connect from 192.0.2.1", now.Add(TrackTTL))
	if n := tr.Sessions(); n != 1 {
		t.Errorf("%d sessions after TrackTTL, want 1", n)
	}
}

// maxlines > 1: the buffer and <SKIPLINES>, as fail2ban's multi-line
// filters use them; the matched lines leave the buffer.
func TestTrackerMaxLines(t *testing.T) {
	f := mustLoad(t, `[Definition]
failregex = ^login user=<F-USER>\S+</F-USER> from <ADDR>$<SKIPLINES>^denied$
[Init]
maxlines = 3
`, "")
	tr := f.NewTracker()
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	lines := []string{
		"login user=eve from 192.0.2.9",
		"noise",
		"denied",
		"denied",
		"login user=x from 192.0.2.10",
		"a", "b", "c",
		"denied",
	}
	var n []int
	for _, l := range lines {
		r := tr.Examine(l, now)
		n = append(n, len(r.Failures))
		if len(r.Failures) == 1 && (r.Failures[0].User != "eve" || r.Failures[0].Host != netip.MustParseAddr("192.0.2.9") || r.Joined != 1) {
			t.Errorf("%q: %+v joined %d", l, r.Failures, r.Joined)
		}
	}
	// "noise" was skipped by <SKIPLINES>: it stays in the buffer, as in
	// fail2ban, and only the login line was joined.
	if got := fmt.Sprint(n); got != "[0 0 1 0 0 0 0 0 0]" {
		t.Errorf("failures per line %s, want only the first denied (the second login left the 3-line buffer)", got)
	}
}

func TestDatePatterns(t *testing.T) {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		pattern, line string
		want          string // RFC 3339 in UTC, "" for no date
		rest          string
	}{
		{"{^LN-BEG}", "Nov 29 09:18:08 mx postfix/smtpd[1]: x", "2026-11-29T09:18:08Z", " mx postfix/smtpd[1]: x"},
		{"{^LN-BEG}", "Nov  9 09:18:08 mx x", "2026-11-09T09:18:08Z", " mx x"},
		{"{^LN-BEG}", "Dec 31 23:59:59 mx x", "2025-12-31T23:59:59Z", " mx x"},
		{"{^LN-BEG}", "Sun Nov 29 09:18:08.123 2026 mx x", "2026-11-29T09:18:08.123Z", " mx x"},
		{"{^LN-BEG}", "2026-11-29T09:18:08.123456+01:00 mx x", "2026-11-29T08:18:08.123456Z", " mx x"},
		{"{^LN-BEG}", "2026-11-29 09:18:08 mx x", "2026-11-29T09:18:08Z", " mx x"},
		{"{^LN-BEG}", "[29-Nov-2026 09:18:08 +0100]: <abcd> Failed login", "2026-11-29T08:18:08Z", "[]: <abcd> Failed login"},
		{"{^LN-BEG}", "mx x Nov 29 09:18:08", "", "mx x Nov 29 09:18:08"},
		{"", "mx x Nov 29 09:18:08 y", "2026-11-29T09:18:08Z", "mx x  y"},
		{"{^LN-BEG}", "Nov 29 09:18:08x", "", "Nov 29 09:18:08x"},
		{"EPOCH", "1764408000.250 x", "2025-11-29T09:20:00.25Z", " x"},
		{"{^LN-BEG}TAI64N", "@40000000692a3bc00000000a x", "2025-11-29T00:18:08.00000001Z", " x"},
		{"^%%Y/%%m/%%d %%H:%%M:%%S", "2026/11/29 09:18:08 x", "2026-11-29T09:18:08Z", " x"},
		{"{NONE}", "Nov 29 09:18:08 x", "", "Nov 29 09:18:08 x"},
		{"{^LN-BEG}", "Feb 31 09:18:08 x", "", "Feb 31 09:18:08 x"},
	} {
		f := mustLoad(t, "[Definition]\nfailregex = ^(?P<rest>.*)<ADDR>\ndatepattern = "+tc.pattern+"\n", "")
		tr := tracker{f: f, loc: time.UTC}
		s, e, dt, ok := f.dates.find(tc.line, now, tr.loc)
		got, rest := "", tc.line
		if ok {
			got, rest = dt.UTC().Format(time.RFC3339Nano), tc.line[:s]+tc.line[e:]
		}
		if got != tc.want || rest != tc.rest {
			t.Errorf("datepattern %q on %q: date %q rest %q, want %q rest %q", tc.pattern, tc.line, got, rest, tc.want, tc.rest)
		}
	}
}

// The fast path for syslog and ISO dates agrees with the regex templates.
func TestFastDateAgrees(t *testing.T) {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	d, err := newDateDetector("{^LN-BEG}")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"Nov 29 09:18:08 mx x", "Nov  9 09:18:08 mx", "Nov 9 9:18:08 x", "Sun Nov 29 09:18:08 2026 x",
		"Jan  1 00:00:00.5 x", "2026-11-29T09:18:08Z x", "2026-11-29T09:18:08,5-0230 x", "2026-11-29T09:18:08+0100",
		"Nov 29 09:18:08 20261 x", "Nov 29 09:18:08 2026x", "Nov 32 09:18:08 x", "2026-13-29T09:18:08 x",
	} {
		fs, fe, ft, fok := fastDate(line, now, time.UTC)
		var rs, re int
		var rt time.Time
		rok := false
		for _, tp := range d.anchored {
			if rs, re, rt, rok = tp.match(line, now, time.UTC); rok {
				break
			}
		}
		if fok && (!rok || fs != rs || fe != re || !ft.Equal(rt)) {
			t.Errorf("%q: fast %d-%d %v, templates %v %d-%d %v", line, fs, fe, ft, rok, rs, re, rt)
		}
	}
}
