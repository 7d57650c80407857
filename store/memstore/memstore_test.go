package memstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/storetest"
)

func TestConformance(t *testing.T) {
	t.Run("Persisted", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T, now func() time.Time) store.Store {
			return open(t, Options{Dir: t.TempDir(), Now: now})
		})
	})
	t.Run("InMemory", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T, now func() time.Time) store.Store {
			return open(t, Options{Now: now})
		})
	})
}

func open(t testing.TB, o Options) *Store {
	t.Helper()
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatalf("Open(%+v) = %v", o, err)
	}
	return s
}

// newClock returns a test clock that moves only when told.
func newClock() *fakeclock.Clock { return fakeclock.New(time.Now().Truncate(time.Millisecond)) }

var recidive = store.Recidive{Window: 24 * time.Hour, Factor: 2, MaxTime: 24 * time.Hour}

func hitOf(subject string) store.Hit {
	return store.Hit{Jail: "dovecot", Subject: subject, Span: 10 * time.Minute, MaxRetry: 3,
		BanTime: time.Hour, Recidive: recidive, Reason: "auth-failure imap"}
}

// banBy hits h until it bans and returns the ban.
func banBy(t *testing.T, s *Store, h store.Hit) store.Ban {
	t.Helper()
	for i := 0; i < h.MaxRetry; i++ {
		r, err := s.Hit(t.Context(), h)
		if err != nil {
			t.Fatalf("Hit = %v", err)
		}
		if r.Ban != nil {
			return *r.Ban
		}
	}
	t.Fatalf("%d hits of %s made no ban", h.MaxRetry, h.Subject)
	return store.Ban{}
}

// state is what must survive a restart.
type state struct {
	bans  []store.Ban
	known map[string]bool
}

func stateOf(t *testing.T, s *Store, keys ...string) state {
	t.Helper()
	bans, err := s.Bans(t.Context())
	if err != nil {
		t.Fatalf("Bans = %v", err)
	}
	st := state{bans: bans, known: map[string]bool{}}
	for _, k := range keys {
		a, err := s.Check(t.Context(), store.Query{Known: k})
		if err != nil {
			t.Fatalf("Check = %v", err)
		}
		st.known[k] = a.Known
	}
	return st
}

func (st state) String() string {
	var b strings.Builder
	for _, x := range st.bans {
		fmt.Fprintf(&b, "%s/%s %d..%d #%d %q; ", x.Jail, x.Subject, x.Created.UnixNano(), x.Expires.UnixNano(), x.Nth, x.Reason)
	}
	fmt.Fprintf(&b, "known %v", st.known)
	return b.String()
}

func sameState(a, b state) bool {
	return a.String() == b.String()
}

// populate makes bans (by Hit and by Ban), an unban and known devices, and
// returns the known keys.
func populate(t *testing.T, s *Store, c *fakeclock.Clock) []string {
	t.Helper()
	ctx := t.Context()
	banBy(t, s, hitOf("net:192.0.2.1/32"))
	banBy(t, s, hitOf("net:192.0.2.2/32"))
	if _, err := s.Ban(ctx, store.Ban{Jail: "manual", Subject: "user:alice@example.org", Expires: c.Now().Add(48 * time.Hour), Reason: "manual"}); err != nil {
		t.Fatalf("Ban = %v", err)
	}
	if _, err := s.Unban(ctx, "net:192.0.2.2/32"); err != nil {
		t.Fatalf("Unban = %v", err)
	}
	if err := s.Remember(ctx, "user+net:bob@example.org|192.0.2.0/24", 30*24*time.Hour); err != nil {
		t.Fatalf("Remember = %v", err)
	}
	if err := s.Remember(ctx, "user+net:carol@example.org|192.0.2.0/24", time.Minute); err != nil {
		t.Fatalf("Remember = %v", err)
	}
	return []string{"user+net:bob@example.org|192.0.2.0/24", "user+net:carol@example.org|192.0.2.0/24", "user+net:nobody|x"}
}

func TestReopenKeepsState(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	s := open(t, Options{Dir: dir, Now: c.Now})
	keys := populate(t, s, c)
	want := stateOf(t, s, keys...)
	if len(want.bans) != 2 || !want.known[keys[0]] || !want.known[keys[1]] || want.known[keys[2]] {
		t.Fatalf("state before Close = %v, want 2 bans and 2 known keys", want)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}

	s = open(t, Options{Dir: dir, Now: c.Now})
	defer s.Close()
	if got := stateOf(t, s, keys...); !sameState(got, want) {
		t.Errorf("state after reopen:\n got %v\nwant %v", got, want)
	}
	// Escalation history survived: the next ban of the unbanned subject is its second.
	c.Add(2 * time.Hour)
	if b := banBy(t, s, hitOf("net:192.0.2.2/32")); b.Nth != 2 || b.Expires.Sub(b.Created) != 2*time.Hour {
		t.Errorf("ban after reopen: Nth %d, lasts %v; want Nth 2, 2h", b.Nth, b.Expires.Sub(b.Created))
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Options{Dir: dir})
	_, err := Open(Options{Dir: dir, Log: slog.New(slog.DiscardHandler)})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), filepath.Join(dir, "lock")) {
		t.Errorf("second Open of %s = %v, want ErrLocked naming the lock file", dir, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	s = open(t, Options{Dir: dir}) // released by Close
	s.Close()
}

func TestCloseTwice(t *testing.T) {
	s := open(t, Options{Dir: t.TempDir()})
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := s.Close(); !errors.Is(err, store.ErrClosed) {
		t.Errorf("second Close = %v, want store.ErrClosed", err)
	}
	if err := s.compact(); !errors.Is(err, store.ErrClosed) {
		t.Errorf("compact after Close = %v, want store.ErrClosed", err)
	}
}

// lastJournal returns the path of the journal being written.
func lastJournal(t *testing.T, dir string) string {
	t.Helper()
	gens, err := journals(dir)
	if err != nil || len(gens) == 0 {
		t.Fatalf("journals(%s) = %v, %v; want at least one", dir, gens, err)
	}
	return journalPath(dir, gens[len(gens)-1])
}

func appendFile(t *testing.T, path, data string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
}

// logBuffer collects log lines, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func TestTornLastLine(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	s := open(t, Options{Dir: dir, Now: c.Now})
	keys := populate(t, s, c)
	want := stateOf(t, s, keys...)
	s.Close()

	journal := lastJournal(t, dir)
	appendFile(t, journal, `{"op":"ban","jail":"dovecot","subject":"net:198.51`)
	var logs logBuffer
	s, err := Open(Options{Dir: dir, Now: c.Now, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Open with a torn last journal line = %v, want it loaded", err)
	}
	defer s.Close()
	if got := stateOf(t, s, keys...); !sameState(got, want) {
		t.Errorf("state after a torn line:\n got %v\nwant %v", got, want)
	}
	if l := logs.String(); !strings.Contains(l, "torn last line") || !strings.Contains(l, journal) {
		t.Errorf("log = %q, want a warning about the torn line naming %s", l, journal)
	}
	if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal with the torn line after Open: Stat = %v, want it compacted away", err)
	}
}

func TestCorruptFiles(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(t *testing.T, dir string) string // returns the file named in the error
		wantErr string
	}{
		{"journal middle line", func(t *testing.T, dir string) string {
			j := lastJournal(t, dir)
			appendFile(t, j, "garbage\n"+`{"op":"unban","subject":"x"}`+"\n")
			return j
		}, "line 2 is corrupt"},
		{"journal unknown op", func(t *testing.T, dir string) string {
			j := lastJournal(t, dir)
			appendFile(t, j, `{"op":"frobnicate"}`+"\n")
			return j
		}, `unknown op "frobnicate"`},
		{"snapshot", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, snapshotName)
			if err := os.WriteFile(p, []byte(`{"version":1,"bans":[{`), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, "is corrupt"},
		{"snapshot version", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, snapshotName)
			if err := os.WriteFile(p, []byte(`{"version":99}`), 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, "version 99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, c := t.TempDir(), newClock()
			s := open(t, Options{Dir: dir, Now: c.Now})
			banBy(t, s, hitOf("net:192.0.2.1/32"))
			s.Close()
			file := tt.corrupt(t, dir)
			s, err := Open(Options{Dir: dir, Now: c.Now, Log: slog.New(slog.DiscardHandler)})
			if err == nil {
				s.Close()
				t.Fatalf("Open with a corrupt %s = nil error, want one naming %s", tt.name, file)
			}
			if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Open with a corrupt %s = %v, want an error naming %s and saying %q", tt.name, err, file, tt.wantErr)
			}
			lock, err := lockDir(dir)
			if err != nil {
				t.Fatalf("lock after a failed Open = %v, want it released", err)
			}
			lock.Close()
		})
	}
}

func TestCompactionKeepsState(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	s := open(t, Options{Dir: dir, Now: c.Now})
	keys := populate(t, s, c)
	if err := s.compact(); err != nil {
		t.Fatalf("compact = %v", err)
	}
	// Changes after a compaction land in the new journal.
	c.Add(2 * time.Hour)
	if b := banBy(t, s, hitOf("net:192.0.2.2/32")); b.Nth != 2 {
		t.Errorf("ban after compaction: Nth = %d, want 2 (history compacted)", b.Nth)
	}
	if err := s.compact(); err != nil {
		t.Fatalf("compact = %v", err)
	}
	if gens, err := journals(dir); err != nil || len(gens) != 1 {
		t.Errorf("journals after compaction = %v, want exactly one", gens)
	}
	want := stateOf(t, s, keys...)
	s.Close()

	s = open(t, Options{Dir: dir, Now: c.Now})
	defer s.Close()
	if got := stateOf(t, s, keys...); !sameState(got, want) {
		t.Errorf("state after compaction and reopen:\n got %v\nwant %v", got, want)
	}
	if _, _, history, _ := s.sizes(); history != 3 {
		t.Errorf("history entries after reopen = %d, want 3 (two Hit bans, one manual)", history)
	}
}

// TestCompactionWhileWriting compacts again and again while bans, unbans
// and known devices are written, and checks that the reopened state is the
// state at Close.
func TestCompactionWhileWriting(t *testing.T) {
	dir := t.TempDir()
	s := open(t, Options{Dir: dir})
	ctx := t.Context()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				subj := fmt.Sprintf("net:10.%d.%d.%d/32", w, i/250, i%250)
				if _, err := s.Ban(ctx, store.Ban{Jail: "manual", Subject: subj, Expires: time.Now().Add(time.Hour)}); err != nil {
					t.Errorf("Ban = %v", err)
					return
				}
				if i%3 == 0 {
					if _, err := s.Unban(ctx, subj); err != nil {
						t.Errorf("Unban = %v", err)
						return
					}
				}
				if err := s.Remember(ctx, subj, time.Hour); err != nil {
					t.Errorf("Remember = %v", err)
					return
				}
			}
		})
	}
	writing := make(chan struct{})
	go func() { wg.Wait(); close(writing) }()
	compactions := 0
	for done := false; !done; {
		select {
		case <-writing:
			done = true
		default:
		}
		if err := s.compact(); err != nil {
			t.Fatalf("compact = %v", err)
		}
		compactions++
	}
	t.Logf("%d compactions while writing", compactions)
	want, err := s.Bans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, _, _, wantKnown := s.sizes()
	s.Close()

	s = open(t, Options{Dir: dir})
	defer s.Close()
	got, err := s.Bans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || len(want) == 0 {
		t.Fatalf("bans after reopen: %d, want %d (> 0)", len(got), len(want))
	}
	for i := range got {
		if got[i].Subject != want[i].Subject || !got[i].Expires.Equal(want[i].Expires) {
			t.Fatalf("ban %d after reopen = %v, want %v", i, got[i], want[i])
		}
	}
	if _, _, _, known := s.sizes(); known != wantKnown {
		t.Errorf("known devices after reopen = %d, want %d", known, wantKnown)
	}
}

func TestJanitorFreesExpired(t *testing.T) {
	c := newClock()
	s := open(t, Options{Dir: t.TempDir(), Now: c.Now})
	defer s.Close()
	ctx := t.Context()
	banBy(t, s, hitOf("net:192.0.2.1/32")) // a ban (1h) and its history (24h)
	for i := range 100 {
		h := hitOf(fmt.Sprintf("net:192.0.3.%d/32", i))
		if _, err := s.Hit(ctx, h); err != nil { // windows (10m)
			t.Fatal(err)
		}
	}
	if err := s.Remember(ctx, "user+net:a|192.0.2.0/24", 30*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ban(ctx, store.Ban{Jail: "manual", Subject: "user:x", Expires: c.Now().Add(2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		after                         time.Duration // since the start
		windows, bans, history, known int
	}{
		{0, 100, 2, 2, 1},
		{10 * time.Minute, 0, 2, 2, 1},
		{30 * time.Minute, 0, 2, 2, 0},
		{time.Hour, 0, 1, 2, 0},
		{2 * time.Hour, 0, 0, 2, 0},
		{24 * time.Hour, 0, 0, 1, 0}, // the manual ban counts for 7 days
		{7 * 24 * time.Hour, 0, 0, 0, 0},
	}
	start := c.Now()
	for _, st := range steps {
		c.Add(start.Add(st.after).Sub(c.Now()))
		s.sweep()
		w, b, h, k := s.sizes()
		if w != st.windows || b != st.bans || h != st.history || k != st.known {
			t.Errorf("after %v: windows %d, bans %d, history %d, known %d; want %d, %d, %d, %d",
				st.after, w, b, h, k, st.windows, st.bans, st.history, st.known)
		}
	}
}

func TestWindowBounded(t *testing.T) {
	s := open(t, Options{})
	defer s.Close()
	h := store.Hit{Jail: "postfix-rate", Subject: "user:a", Span: time.Hour, MaxRetry: 5, Member: "", BanTime: 0}
	for i := range 1000 {
		h.Member = ""
		if i%2 == 0 {
			h.Member = fmt.Sprint(i)
		}
		if _, err := s.Hit(t.Context(), h); err != nil {
			t.Fatal(err)
		}
	}
	sh := s.shard(h.Subject)
	w := sh.windows[wkey{h.Jail, h.Subject}]
	if len(w.times) != h.MaxRetry+1 || len(w.members) != len(w.times) {
		t.Errorf("window after 1000 hits: %d times, %d members; want %d of each", len(w.times), len(w.members), h.MaxRetry+1)
	}
}

func TestRememberWritesJournalSparingly(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	s := open(t, Options{Dir: dir, Now: c.Now})
	defer s.Close()
	remember := func() int64 {
		t.Helper()
		if err := s.Remember(t.Context(), "user+net:a|192.0.2.0/24", 64*time.Minute); err != nil {
			t.Fatal(err)
		}
		return s.j.bytes()
	}
	first := remember()
	c.Add(59 * time.Second)
	if got := remember(); got != first {
		t.Errorf("journal grew from %d to %d bytes on a Remember 59s later (ttl/64 = 1m)", first, got)
	}
	c.Add(time.Second)
	if got := remember(); got <= first {
		t.Errorf("journal stayed at %d bytes on a Remember 1m later, want a record", got)
	}
}

const helperDirEnv = "MEMSTORE_HELPER_DIR"

// TestHelperProcess is not a test: TestKill9 runs the test binary as a child
// with MEMSTORE_HELPER_DIR set, and this places state there, says "ready"
// and waits to be killed.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		return // run as a test: nothing to do
	}
	s, err := Open(Options{Dir: dir})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	ctx := context.Background()
	h := hitOf("net:192.0.2.9/32")
	for range h.MaxRetry {
		if _, err := s.Hit(ctx, h); err != nil {
			fmt.Println("hit:", err)
			os.Exit(1)
		}
	}
	if _, err := s.Ban(ctx, store.Ban{Jail: "manual", Subject: "user:mallory@example.org", Expires: time.Now().Add(time.Hour), Reason: "manual"}); err != nil {
		fmt.Println("ban:", err)
		os.Exit(1)
	}
	if err := s.Remember(ctx, "user+net:bob@example.org|192.0.2.0/24", time.Hour); err != nil {
		fmt.Println("remember:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	time.Sleep(time.Minute) // killed long before
	os.Exit(2)
}

func TestKill9(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start helper: %v", err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	timeout := time.After(30 * time.Second)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("helper exited without saying ready")
			}
			if l == "ready" {
				break wait
			}
			t.Logf("helper: %s", l)
		case <-timeout:
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("helper not ready within 30s")
		}
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatalf("kill helper: %v", err)
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ProcessState.String() != "signal: killed" {
		t.Fatalf("helper ended with %v, want signal: killed", err)
	}
	for range lines {
	}

	s := open(t, Options{Dir: dir}) // the lock died with the helper
	defer s.Close()
	a, err := s.Check(t.Context(), store.Query{
		Subjects: []store.Subject{"net:192.0.2.9/32", "user:mallory@example.org"},
		Known:    "user+net:bob@example.org|192.0.2.0/24",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Bans) != 2 || !a.Known {
		t.Errorf("after kill -9: bans %v, known %v; want the Hit ban, the manual ban and the known device", a.Bans, a.Known)
	}
	// The history survived too: after an unban, the next ban is the second.
	if _, err := s.Unban(t.Context(), "net:192.0.2.9/32"); err != nil {
		t.Fatal(err)
	}
	if b := banBy(t, s, hitOf("net:192.0.2.9/32")); b.Nth != 2 {
		t.Errorf("ban after kill -9 and unban: Nth = %d, want 2", b.Nth)
	}
}

func BenchmarkCheck(b *testing.B) {
	s := open(b, Options{Dir: b.TempDir()})
	defer s.Close()
	ctx := context.Background()
	const subjects = 10000
	for i := range subjects {
		h := store.Hit{Jail: "dovecot", Subject: fmt.Sprintf("net:10.0.%d.%d/32", i/256, i%256), Span: 10 * time.Minute,
			MaxRetry: 5, BanTime: time.Hour, Reason: "bench"}
		for range 1 + i%5 { // some windows, a fifth of them banned
			if _, err := s.Hit(ctx, h); err != nil {
				b.Fatal(err)
			}
		}
	}
	// Queries as guard.Check makes them for a login: address, user, pair.
	queries := make([]store.Query, 1024)
	for i := range queries {
		ip := fmt.Sprintf("10.0.%d.%d", i/256%40, i%256)
		user := fmt.Sprintf("u%d@example.org", i%97)
		queries[i] = store.Query{
			Subjects: []store.Subject{"net:" + ip + "/32", "user:" + user, "user+net:" + user + "|" + ip + "/32"},
			Known:    "user+net:" + user + "|" + ip + "/32",
			Counts: []store.Window{
				{Jail: "dovecot", Subject: "net:" + ip + "/32", Span: 10 * time.Minute},
				{Jail: "dovecot-user", Subject: "user:" + user, Span: time.Hour},
			},
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			if _, err := s.Check(ctx, queries[i%len(queries)]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkHit records failures of 65536 addresses with maxretry 5: in
// "bans", every fifth Hit bans and writes a journal record; in "count-only"
// (bantime 0, a rate limit) none does.
func BenchmarkHit(b *testing.B) {
	for _, bc := range []struct {
		name    string
		banTime time.Duration
	}{{"bans", time.Hour}, {"count-only", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			s := open(b, Options{Dir: b.TempDir()})
			defer s.Close()
			ctx := context.Background()
			hits := make([]store.Hit, 1<<16)
			for i := range hits {
				hits[i] = store.Hit{Jail: "dovecot", Subject: fmt.Sprintf("net:10.1.%d.%d/32", i/256, i%256), Span: 10 * time.Minute,
					MaxRetry: 5, BanTime: bc.banTime, Recidive: recidive, Reason: "bench"}
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					if _, err := s.Hit(ctx, hits[i%len(hits)]); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// TestLongRecidiveAfterRestart: a recidive window longer than a manual ban's
// seven days survives a restart and a sweep before any Hit names it again.
func TestLongRecidiveAfterRestart(t *testing.T) {
	dir, c := t.TempDir(), newClock()
	h := hitOf("net:192.0.2.8/32")
	h.Recidive = store.Recidive{Window: 30 * 24 * time.Hour, Factor: 2}
	s := open(t, Options{Dir: dir, Now: c.Now})
	banBy(t, s, h)
	s.Close()

	c.Add(10 * 24 * time.Hour)
	s = open(t, Options{Dir: dir, Now: c.Now})
	defer s.Close()
	s.sweep()
	if _, _, history, _ := s.sizes(); history != 1 {
		t.Errorf("history entries 10 days after a ban with a 30-day window = %d, want 1", history)
	}
	if b := banBy(t, s, h); b.Nth != 2 {
		t.Errorf("ban 10 days later: Nth = %d, want 2", b.Nth)
	}
}
