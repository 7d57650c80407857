package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
)

var update = flag.Bool("update", false, "rewrite testdata/day.jsonl (through the real guard) and the golden files")

// day0 is the recorded day's midnight.
var day0 = time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)

func jail(name, event string, key guard.Key, maxretry int, findtime, bantime time.Duration) guard.Jail {
	return guard.Jail{Name: name, Events: []string{event}, Key: key, MaxRetry: maxretry, FindTime: findtime,
		BanTime: bantime, Action: guard.ActionRefuse}
}

// policy is a config's guard part; the recorded day ran with recorded().
func policy(dovecot, dovecotUser, postfix int) guard.Config {
	c := guard.Config{
		Ignore:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Recidive: store.Recidive{Window: 24 * time.Hour, Factor: 2, MaxTime: 24 * time.Hour},
	}
	c.Jails = append(c.Jails, jail("dovecot", guard.EventAuthFailure, guard.KeyPrefix, dovecot, 10*time.Minute, time.Hour))
	c.Jails = append(c.Jails, jail("dovecot-user", guard.EventAuthFailure, guard.KeyUser, dovecotUser, time.Hour, time.Hour))
	if postfix > 0 {
		c.Jails = append(c.Jails, jail("postfix", guard.EventAbuse, guard.KeyPrefix, postfix, 10*time.Minute, time.Hour))
	}
	return c
}

func recorded() guard.Config { return policy(5, 20, 5) }
func stricter() guard.Config { return policy(3, 10, 3) }
func looser() guard.Config   { return policy(10, 30, 0) }

// office is alice's known device.
var office = netip.MustParseAddr("198.51.100.10")

func known() []Device { return []Device{{User: "alice@example.org", Addr: office}} }

// attempt is one client attempt of the scripted day.
type attempt struct {
	at    time.Duration // since day0
	addr  string
	user  string
	abuse bool // SMTP abuse (Postfix) instead of a failed login
	ok    bool // a successful login
}

// script is the recorded day: attackers fast and slow, a spray against
// one account, an IPv6 attacker rotating through its /64, SMTP abuse, a
// user mistyping her password at the office, a login with control
// characters.
func script() []attempt {
	var s []attempt
	add := func(a attempt) { s = append(s, a) }
	add(attempt{at: 7 * time.Hour, addr: office.String(), user: "alice@example.org", ok: true})
	// A fast attacker: 12 tries in 2 minutes (banned at the 5th).
	for i := range 12 {
		add(attempt{at: time.Hour + time.Duration(i)*10*time.Second, addr: "203.0.113.7", user: fmt.Sprintf("admin%d", i)})
	}
	// A slow attacker: 4 tries every 10 minutes, then again an hour later.
	for i := range 4 {
		add(attempt{at: 2*time.Hour + time.Duration(i)*2*time.Minute, addr: "203.0.113.8", user: "info@example.org"})
		add(attempt{at: 3*time.Hour + time.Duration(i)*2*time.Minute, addr: "203.0.113.8", user: "info@example.org"})
	}
	// A medium attacker: 6 tries in 8 minutes (banned, not by a looser config).
	for i := range 6 {
		add(attempt{at: 4*time.Hour + time.Duration(i)*90*time.Second, addr: "192.0.2.33", user: "sales@example.org"})
	}
	// A spray against one account from 25 addresses in 50 minutes.
	for i := range 25 {
		add(attempt{at: 5*time.Hour + time.Duration(i)*2*time.Minute, addr: fmt.Sprintf("100.64.%d.%d", i, i+1), user: "bob@example.org"})
	}
	// An IPv6 attacker rotating through its /64.
	for i := range 7 {
		add(attempt{at: 6*time.Hour + time.Duration(i)*30*time.Second, addr: fmt.Sprintf("2001:db8:1:2::%x", 0x10+i), user: "carol@example.org"})
	}
	// SMTP abuse.
	for i := range 6 {
		add(attempt{at: 8*time.Hour + time.Duration(i)*time.Minute, addr: "192.0.2.50", abuse: true})
	}
	// Alice mistypes three times at the office, then logs in again.
	for i := range 4 {
		add(attempt{at: 9*time.Hour + time.Duration(i)*time.Minute, addr: office.String(), user: "alice@example.org"})
	}
	// A spray with a login forged to move the terminal's cursor.
	for i := range 12 {
		add(attempt{at: 10*time.Hour + time.Duration(i)*time.Minute, addr: fmt.Sprintf("100.65.0.%d", i+1), user: "root\x1b[2J\u202e@example.org"})
	}
	return s
}

// record runs the script through the real guard with the recorded policy,
// as the front ends do (check, then report the failure), and returns the
// audit file it wrote.
func record(t *testing.T, dir string) string {
	t.Helper()
	var clock atomic.Int64
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	st, err := memstore.Open(memstore.Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	path := filepath.Join(dir, "day.jsonl")
	os.Remove(path)
	af, err := audit.OpenFile(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	rec := audit.NewRecorder(audit.Options{Node: "mx1", Users: audit.UserPlain, File: af, Now: now})
	c := recorded()
	c.Now, c.Audit, c.Log = now, rec, slog.New(slog.DiscardHandler)
	g, err := guard.New(st, c)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s := script()
	sortAttempts(s)
	for _, a := range s {
		clock.Store(day0.Add(a.at).UnixNano())
		addr := netip.MustParseAddr(a.addr)
		src, proto := "dovecot", "imap"
		if a.abuse {
			src, proto = "postfix", "smtp"
		}
		v, err := g.CheckFrom(ctx, src, proto, addr, a.user)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case v.Refused:
		case a.ok:
			err = g.Succeed(ctx, addr, a.user)
		case a.abuse:
			_, err = g.Abuse(ctx, addr, "rcpt flood")
		default:
			_, err = g.Fail(guard.WithOrigin(ctx, src, proto), addr, a.user, proto, "")
		}
		if err != nil {
			t.Fatal(err)
		}
		// One event at a time, so the file is in the clock's order.
		if err := rec.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func sortAttempts(s []attempt) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].at < s[j-1].at; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// dayFile is testdata/day.jsonl, rewritten through the real guard with
// -update (its ids are random, so it is kept for stable goldens).
var recordOnce sync.Once

func dayFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join("testdata", "day.jsonl")
	if *update {
		recordOnce.Do(func() { writeDay(t, path) })
	}
	return path
}

func writeDay(t *testing.T, path string) {
	{
		b, err := os.ReadFile(record(t, t.TempDir()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func replayFile(t *testing.T, path string, o Options) *Result {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := Run(context.Background(), f, o)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test ./replay -update rewrites it):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// The same config replayed over its own recorded day makes the same bans:
// the replay is faithful to the real run.
func TestReplaySameConfig(t *testing.T) {
	res := replayFile(t, record(t, t.TempDir()), Options{Guard: recorded(), Known: known()})
	if len(res.Added)+len(res.Removed) != 0 {
		var b bytes.Buffer
		Print(&b, res)
		t.Fatalf("replay of the recorded config differs from the recorded run:\n%s", b.String())
	}
	rec := 0
	for _, s := range res.Jails {
		rec += s.Recorded
	}
	if rec < 5 || len(res.Bad) != 0 || len(res.Known) != 0 || res.Refused == 0 {
		t.Errorf("recorded bans %d, bad %v, known %v, refused %d: want ≥5 bans, refusals, nothing bad or known",
			rec, res.Bad, res.Known, res.Refused)
	}
}

func TestReplayGoldens(t *testing.T) {
	path := dayFile(t)
	for _, tc := range []struct {
		name string
		c    guard.Config
		// want: lines the output must hold (beside the golden file).
		want []string
	}{
		{"stricter", stricter(), []string{
			"+ net:203.0.113.8/32 dovecot ",
			"+ net:198.51.100.10/32 dovecot ",
			"!!! USERS REFUSED FROM THEIR KNOWN DEVICES: 1",
			`+ user:root\x1b[2j\u202e@example.org dovecot-user `,
		}},
		{"looser", looser(), []string{
			"- net:192.0.2.33/32 dovecot ",
			"- net:2001:db8:1:2::/64 dovecot ",
			"- user:bob@example.org dovecot-user ",
			"- net:192.0.2.50/32 postfix ",
			"no user refused from a known device",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := replayFile(t, path, Options{Guard: tc.c, Known: known()})
			var out bytes.Buffer
			if err := Print(&out, res); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if strings.ContainsAny(out.String(), "\x1b\u202e") {
				t.Errorf("output holds a control character:\n%q", out.String())
			}
			golden(t, tc.name+".golden", out.Bytes())
			js, err := json.MarshalIndent(res, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name+".json.golden", append(js, '\n'))
		})
	}
}

func TestReplaySince(t *testing.T) {
	res := replayFile(t, dayFile(t), Options{Guard: recorded(), Since: day0.Add(5 * time.Hour)})
	if res.From.Before(day0.Add(5 * time.Hour)) {
		t.Errorf("From = %v, want ≥ 05:00", res.From)
	}
	for _, s := range res.Jails {
		if s.Jail == "dovecot" && s.Recorded != 1 { // the IPv6 /64 only
			t.Errorf("dovecot recorded bans since 05:00 = %d, want 1", s.Recorded)
		}
	}
}

// Bad lines are reported with their number and skipped; the rest replays.
func TestReplayBadLines(t *testing.T) {
	good, err := os.ReadFile(dayFile(t))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(strings.TrimSuffix(string(good), "\n"), "\n")
	lines[len(lines)-1] += "\n"
	first := strings.TrimSuffix(lines[0], "\n")
	bad := []string{
		first[:len(first)/2] + "\n",                                    // truncated JSON
		strings.Replace(first, `"addr":"`, `"addr":"300.1.`, 1) + "\n", // invalid address
		`{"v":1,"kind":"failure"}` + "\n",                              // no id
		strings.Repeat("x", audit.MaxLine+10) + "\n",                   // too long
		"\x00\x01garbage\n",
	}
	var in strings.Builder
	in.WriteString(lines[0])
	for _, b := range bad {
		in.WriteString(b)
	}
	for _, l := range lines[1:] {
		in.WriteString(l)
	}
	in.WriteString(`{"v":1,"id":"zzzzzzzzzz","kind":"failure","time":"2026-11-28T23:00:00Z","addr":"192.0.2.1"`) // torn last line
	res, err := Run(context.Background(), strings.NewReader(in.String()), Options{Guard: recorded(), Known: known()})
	if err != nil {
		t.Fatal(err)
	}
	wantLines := []int{2, 3, 4, 5, 6, len(lines) + len(bad) + 1}
	if len(res.Bad) != len(wantLines) {
		t.Fatalf("bad lines %v, want lines %v", res.Bad, wantLines)
	}
	for i, w := range wantLines {
		if res.Bad[i].Line != w {
			t.Errorf("bad[%d] at line %d, want %d (%v)", i, res.Bad[i].Line, w, res.Bad[i])
		}
	}
	if !strings.Contains(res.Bad[1].Err, `invalid address "300.1.`) {
		t.Errorf("bad address error = %q", res.Bad[1].Err)
	}
	if len(res.Added)+len(res.Removed) != 0 || res.Events != len(lines) {
		t.Errorf("after bad lines: events %d (want %d), +%d -%d (want none)", res.Events, len(lines), len(res.Added), len(res.Removed))
	}
	var out bytes.Buffer
	Print(&out, res)
	if !strings.Contains(out.String(), "line 3: record ") || strings.Contains(out.String(), "\x00") {
		t.Errorf("printed bad lines:\n%q", out.String())
	}
	// Past MaxBadLines the replay stops with an error.
	_, err = Run(context.Background(), strings.NewReader(strings.Repeat("{\n", 5)), Options{Guard: recorded(), MaxBadLines: 3})
	if err == nil || !strings.Contains(err.Error(), "too many bad lines") {
		t.Errorf("5 bad lines with MaxBadLines 3: err %v", err)
	}
}

// A trail with hashed users replays user jails under the hashes and
// matches the recorded bans (whose subject names the login).
func TestReplayHashedUsers(t *testing.T) {
	e := audit.Event{V: 1, ID: "a", Kind: audit.KindBan, User: audit.UserHash("Bob@example.org"), Subject: "user:bob@example.org", Jail: "dovecot-user"}
	if got, want := subjectOf(e), "user:"+audit.UserHash("bob@example.org"); got != want {
		t.Errorf("subjectOf = %q, want %q", got, want)
	}
	e.Subject = "user+net:bob@example.org|192.0.2.0/24"
	if got, want := subjectOf(e), "user+net:"+audit.UserHash("bob@example.org")+"|192.0.2.0/24"; got != want {
		t.Errorf("subjectOf = %q, want %q", got, want)
	}
}

// Failures a log filter found count in the jails that named the log.
func TestReplayLogFailures(t *testing.T) {
	rp, err := New(Options{Guard: recorded()})
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	ctx := context.Background()
	for i := range 5 {
		e := audit.Event{V: 1, ID: fmt.Sprintf("log%07d", i), Time: day0.Add(time.Duration(i) * time.Minute), Kind: audit.KindFailure,
			Source: "log:/var/log/mail.log:postfix", Event: guard.ProtocolLog, Addr: "192.0.2.99", Jails: []string{"postfix", "gone"}}
		if err := rp.Event(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	res := rp.Result()
	if len(res.Added) != 1 || res.Added[0].Subject != "net:192.0.2.99/32" || res.Added[0].Jail != "postfix" {
		t.Errorf("added %+v, want one postfix ban of 192.0.2.99", res.Added)
	}
}

// A recorded refusal of an API check the new config lets through is
// replayed as a failed login reported over HTTP, whether the check token's
// name is an app name (api:nginx) or not (api:line 3).
func TestReplayAPICheckRefusals(t *testing.T) {
	rp, err := New(Options{Guard: recorded()})
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	ctx := context.Background()
	for i, src := range []string{"api:nginx", "api:line 3"} {
		e := audit.Event{V: 1, ID: fmt.Sprintf("chk%07d", i), Time: day0.Add(time.Duration(i) * time.Minute), Kind: audit.KindRefusal,
			Source: src, Protocol: guard.ReportProtocol, Addr: "192.0.2.98", Jail: "dovecot", Subject: "net:192.0.2.98/32"}
		if err := rp.Event(ctx, e); err != nil {
			t.Fatalf("refusal from %s: %v", src, err)
		}
	}
	res := rp.Result()
	if res.LetThrough != 2 {
		t.Errorf("let through %d, want 2", res.LetThrough)
	}
	for _, j := range res.Jails {
		if j.Jail == "dovecot" && j.Failures != 2 {
			t.Errorf("dovecot counted %d failures, want 2", j.Failures)
		}
	}
}
