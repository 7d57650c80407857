package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/store"
)

func TestPlanLogs(t *testing.T) {
	dir := t.TempDir()
	present := filepath.Join(dir, "mail.log")
	os.WriteFile(present, nil, 0o644)
	missing := filepath.Join(dir, "none.log")
	const journal = "_SYSTEMD_UNIT=postfix@-.service"
	found := func(string) (string, error) { return "/usr/bin/journalctl", nil }
	absent := func(string) (string, error) { return "", errors.New("not found") }
	for _, tc := range []struct {
		name     string
		logs     []config.LogSource
		lookPath func(string) (string, error)
		want     []string // feed labels of the postfix jail
		notes    int
	}{
		{"file present", []config.LogSource{{Path: present, Journal: journal, Filter: "postfix"}}, found, []string{"log:" + present + ":postfix"}, 0},
		{"file missing: the journal", []config.LogSource{{Path: missing, Journal: journal, Filter: "postfix"}}, found, []string{"journal:" + journal + ":postfix"}, 0},
		{"neither: said once", []config.LogSource{{Path: missing, Journal: journal, Filter: "postfix"}}, absent, nil, 1},
		{"a file alone is followed even if missing", []config.LogSource{{Path: missing, Filter: "postfix", Mode: "aggressive"}}, absent, []string{"log:" + missing + ":postfix[mode=aggressive]"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Defaults()
			c.StateDir = dir
			j := c.Jails["postfix"]
			j.Logs = tc.logs
			c.Jails["postfix"] = j
			p, err := planLogs(c, tc.lookPath)
			if err != nil {
				t.Fatal(err)
			}
			if got := p.byJail["postfix"]; !slices.Equal(got, tc.want) {
				t.Errorf("feeds = %q, want %q", got, tc.want)
			}
			if len(p.notes) != tc.notes {
				t.Errorf("notes = %q, want %d", p.notes, tc.notes)
			}
		})
	}

	// Two jails on one file share one follower (one position file).
	c := config.Defaults()
	c.StateDir = dir
	c.Jails["postfix"] = withLogs(c.Jails["postfix"], config.LogSource{Path: present, Filter: "postfix"})
	c.Jails["sasl"] = withLogs(c.Jails["postfix"], config.LogSource{Path: present, Filter: "postfix-sasl"})
	p, err := planLogs(c, absent)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.sources) != 1 || len(p.sources[0].feeds) != 2 {
		t.Errorf("two jails on one file: %d sources, want 1 with 2 feeds", len(p.sources))
	}
}

func withLogs(j config.Jail, l ...config.LogSource) config.Jail {
	j.Logs = l
	return j
}

type logCall struct {
	jail, addr, user, source string
}

type fakeLogGuard struct {
	mu    sync.Mutex
	calls []logCall
	err   error
}

func (f *fakeLogGuard) LogFailure(_ context.Context, jail string, a netip.Addr, user, source string) ([]store.Ban, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, logCall{jail, a.String(), user, source})
	return nil, f.err == nil, f.err
}

func (f *fakeLogGuard) got() []logCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

type fakeCounter struct{ n atomic.Int64 }

func (c *fakeCounter) Inc() { c.n.Add(1) }

type fakeLogMetrics struct {
	mu       sync.Mutex
	counters map[string]*fakeCounter
	up       map[string]func() bool
}

func (m *fakeLogMetrics) c(name string) *fakeCounter {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.counters == nil {
		m.counters = map[string]*fakeCounter{}
	}
	if m.counters[name] == nil {
		m.counters[name] = &fakeCounter{}
	}
	return m.counters[name]
}
func (m *fakeLogMetrics) logLines(source string) counter { return m.c("lines " + source) }
func (m *fakeLogMetrics) logMatches(source, jail string) counter {
	return m.c("matches " + source + " " + jail)
}
func (m *fakeLogMetrics) logSourceUp(source string, up func() bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.up == nil {
		m.up = map[string]func() bool{}
	}
	m.up[source] = up
}
func (m *fakeLogMetrics) storeError() { m.c("store errors").Inc() }

// Lines written to a followed file reach the jail that names it, with the
// address of the line, the user only for a jail keyed by user, and the
// source; a store error is counted and logged once per period.
func TestLogRunner(t *testing.T) {
	dir := t.TempDir()
	mail := filepath.Join(dir, "mail.log")
	os.WriteFile(mail, nil, 0o644)
	c := config.Defaults()
	c.StateDir = filepath.Join(dir, "state")
	c.Jails["postfix"] = withLogs(c.Jails["postfix"], config.LogSource{Path: mail, Filter: "postfix-sasl"})
	c.Jails["sasl-user"] = config.Jail{Enabled: true, Key: "user", MaxRetry: 3, FindTime: config.Duration(time.Hour),
		BanTime: config.Duration(time.Hour), Action: "refuse", Logs: []config.LogSource{{Path: mail, Filter: "postfix-sasl"}}}
	c.Jails["missing"] = withLogs(c.Jails["postfix"], config.LogSource{Path: filepath.Join(dir, "none", "x.log"), Filter: "postfix"})
	p, err := planLogs(c, func(string) (string, error) { return "", errors.New("no") })
	if err != nil {
		t.Fatal(err)
	}
	fg := &fakeLogGuard{}
	fm := &fakeLogMetrics{}
	var logBuf strings.Builder
	var logMu sync.Mutex
	r := &logRunner{plan: p, g: fg, timeout: time.Second, metrics: fm,
		log: slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logBuf}, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.start(ctx, c.StateDir)
	defer r.stop()
	line := "Nov 29 09:18:08 mx postfix/smtpd[1234]: warning: unknown[192.0.2.7]: SASL PLAIN authentication failed: UGFzc3dvcmQ6, sasl_username=alice@example.org\n"
	f, _ := os.OpenFile(mail, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(line + "Nov 29 09:18:09 mx postfix/smtpd[1234]: connect from unknown[192.0.2.8]\n")
	f.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(fg.got()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	src := "log:" + mail + ":postfix-sasl"
	want := []logCall{{"postfix", "192.0.2.7", "", src}, {"sasl-user", "192.0.2.7", "alice@example.org", src}}
	if got := fg.got(); !slices.Equal(got, want) {
		t.Fatalf("guard calls = %+v, want %+v", got, want)
	}
	if n := fm.c("lines log:" + mail).n.Load(); n != 2 {
		t.Errorf("lines counted %d, want 2", n)
	}
	if err := r.health(); err == nil || !strings.Contains(err.Error(), "none/x.log") {
		t.Errorf("health = %v, want the missing source named", err)
	}
	if fm.up["log:"+mail]() != true {
		t.Errorf("up(%s) = false", mail)
	}
	logMu.Lock()
	if !strings.Contains(logBuf.String(), "log source cannot be read yet") {
		t.Errorf("start did not say that a source cannot be read:\n%s", logBuf.String())
	}
	logMu.Unlock()

	fg.mu.Lock()
	fg.err = errors.New("store down")
	fg.mu.Unlock()
	f, _ = os.OpenFile(mail, os.O_APPEND|os.O_WRONLY, 0)
	for range 5 {
		f.WriteString(line)
	}
	f.Close()
	for len(fg.got()) < 12 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := fm.c("store errors").n.Load(); n != 10 {
		t.Errorf("store errors counted %d, want 10", n)
	}
	logMu.Lock()
	if n := strings.Count(logBuf.String(), "log match not counted"); n != 1 {
		t.Errorf("%d store error lines, want 1 (rate-limited):\n%s", n, logBuf.String())
	}
	logMu.Unlock()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// A jail whose filter file is multi-line (<F-MLFID>) gets the address from
// the session's earlier line: each source's feed keeps a Tracker.
func TestLogRunnerMultiLine(t *testing.T) {
	dir := t.TempDir()
	app := filepath.Join(dir, "app.log")
	os.WriteFile(app, nil, 0o644)
	filterFile := filepath.Join(dir, "app.conf")
	os.WriteFile(filterFile, []byte(`[Definition]
prefregex = ^\s*app: session <F-MLFID>\d+</F-MLFID>: <F-CONTENT>.+</F-CONTENT>$
failregex = ^<F-NOFAIL>connect</F-NOFAIL> from <ADDR>$
            ^auth failed user=<F-USER>\S+</F-USER>$
datepattern = {^LN-BEG}
`), 0o644)
	c := config.Defaults()
	c.StateDir = filepath.Join(dir, "state")
	c.Jails = map[string]config.Jail{"app": {Enabled: true, Key: "user", MaxRetry: 3, FindTime: config.Duration(time.Hour),
		BanTime: config.Duration(time.Hour), Action: "refuse", Logs: []config.LogSource{{Path: app, Filter: filterFile}}}}
	p, err := planLogs(c, func(string) (string, error) { return "", errors.New("no") })
	if err != nil {
		t.Fatal(err)
	}
	fg := &fakeLogGuard{}
	r := &logRunner{plan: p, g: fg, timeout: time.Second, metrics: &fakeLogMetrics{},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.start(ctx, c.StateDir)
	defer r.stop()
	f, _ := os.OpenFile(app, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("Nov 29 09:00:00 app: session 7: connect from 192.0.2.7\n" +
		"Nov 29 09:00:01 app: session 8: connect from 192.0.2.8\n" +
		"Nov 29 09:00:02 app: session 7: auth failed user=bob\n")
	f.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(fg.got()) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	want := []logCall{{"app", "192.0.2.7", "bob", "log:" + app + ":" + filterFile}}
	if got := fg.got(); !slices.Equal(got, want) {
		t.Fatalf("guard calls = %+v, want %+v", got, want)
	}
}
