package logwatch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// wait bounds every wait for a file event; the tests never sleep to let
// time pass.
const wait = 10 * time.Second

// collector receives lines from a Follower.
type collector struct {
	mu    sync.Mutex
	lines []Line
	more  chan struct{}
}

func newCollector() *collector { return &collector{more: make(chan struct{}, 1)} }

func (c *collector) deliver(l Line) {
	c.mu.Lock()
	c.lines = append(c.lines, l)
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// waitN waits until n lines arrived and returns them as strings.
func (c *collector) waitN(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(wait)
	for c.count() < n {
		select {
		case <-c.more:
		case <-deadline:
			t.Fatalf("got %d lines after %v, want %d; last: %q", c.count(), wait, n, c.texts()[max(0, c.count()-3):])
		}
	}
	return c.texts()
}

func (c *collector) texts() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.lines))
	for i, l := range c.lines {
		out[i] = string(l.Text)
	}
	return out
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
}

func numbered(from, to int) string {
	var b strings.Builder
	for i := from; i < to; i++ {
		fmt.Fprintf(&b, "line %06d\n", i)
	}
	return b.String()
}

func wantLines(from, to int) []string {
	return strings.Split(strings.TrimSuffix(numbered(from, to), "\n"), "\n")
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// modes runs a test with inotify only (the poll an hour away, so only
// events can wake the follower) and with polling only.
var modes = []struct {
	name     string
	noNotify bool
	poll     time.Duration
}{
	{"inotify", false, time.Hour},
	{"polling", true, 5 * time.Millisecond},
}

func start(t *testing.T, f *Follower) *collector {
	t.Helper()
	c := newCollector()
	if err := f.Start(context.Background(), c.deliver); err != nil {
		t.Fatalf("Start(%s) = %v", f.Path, err)
	}
	t.Cleanup(f.Stop)
	return c
}

func TestFollowStartsAtEndAndHoldsPartialLines(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "mail.log")
			appendFile(t, path, "old line\n")
			c := start(t, &Follower{Path: path, NoNotify: m.noNotify, PollInterval: m.poll})
			appendFile(t, path, "new 1\nnew")
			if got := c.waitN(t, 1); !equal(got, []string{"new 1"}) {
				t.Fatalf("lines = %q, want [new 1]", got)
			}
			appendFile(t, path, " 2\n")
			if got := c.waitN(t, 2); !equal(got, []string{"new 1", "new 2"}) {
				t.Fatalf("lines = %q, want [new 1, new 2]", got)
			}
		})
	}
}

// rotate writes n numbered lines in batches while the follower reads,
// rotating every `every` lines with rot, and checks that every line arrives
// exactly once, in order. Before a rotation the writer waits until the
// follower reached the current generation: two rotations between two reads
// lose a generation with any follower (fail2ban's too). With drained, the
// writer also waits after a rotation until the follower delivered every line
// written before it: see TestRotationByCopytruncate.
func rotate(t *testing.T, noNotify bool, poll time.Duration, drained bool, rot func(t *testing.T, path string)) {
	path := filepath.Join(t.TempDir(), "mail.log")
	appendFile(t, path, "")
	c := start(t, &Follower{Path: path, NoNotify: noNotify, PollInterval: poll})
	const n, every, batch = 3000, 500, 50
	genStart := 0
	for i := 0; i < n; i += batch {
		if i > 0 && i%every == 0 {
			c.waitN(t, genStart+1)
			rot(t, path)
			if drained {
				c.waitN(t, i)
			}
			genStart = i
		}
		appendFile(t, path, numbered(i, i+batch))
	}
	got := c.waitN(t, n)
	if !equal(got, wantLines(0, n)) {
		seen := map[string]int{}
		for _, l := range got {
			seen[l]++
		}
		for _, w := range wantLines(0, n) {
			if seen[w] != 1 {
				t.Errorf("%q delivered %d times, want once", w, seen[w])
			}
		}
		t.Fatalf("lines out of order or extra: got %d lines, want %d", len(got), n)
	}
	// Nothing more: a marker line is the next one delivered.
	appendFile(t, path, "marker\n")
	if got := c.waitN(t, n+1); got[n] != "marker" || len(got) != n+1 {
		t.Fatalf("after the last line got %q, want only marker", got[n:])
	}
}

func TestRotationByRename(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			rotate(t, m.noNotify, m.poll, false, func(t *testing.T, path string) {
				if err := os.Rename(path, path+RotatedSuffix); err != nil {
					t.Fatal(err)
				}
				appendFile(t, path, "")
			})
		})
	}
}

// Copytruncate: the lines the follower had not read yet when the file was
// truncated come from the copy (NAME.1), in order, once. The writer waits
// until they have before writing again: a file truncated and then written
// past the follower's offset in the microseconds between its check and its
// read would be read as the old file's continuation, which no follower can
// tell (logrotate's copytruncate is racy by its nature; real logs grow far
// slower than this test writes).
func TestRotationByCopytruncate(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			rotate(t, m.noNotify, m.poll, true, func(t *testing.T, path string) {
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path+RotatedSuffix, b, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(path, 0); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

func TestRestartReadsOnlyNewLines(t *testing.T) {
	for _, tc := range []struct {
		name   string
		down   func(t *testing.T, path string) // what happens while stopped
		resume []string
	}{
		{"appended", func(t *testing.T, path string) {
			appendFile(t, path, numbered(10, 20))
		}, wantLines(10, 20)},
		{"nothing", func(t *testing.T, path string) {}, nil},
		{"rotated by rename", func(t *testing.T, path string) {
			appendFile(t, path, numbered(10, 15))
			if err := os.Rename(path, path+RotatedSuffix); err != nil {
				t.Fatal(err)
			}
			appendFile(t, path, numbered(15, 20))
		}, wantLines(10, 20)},
		{"rotated by copytruncate", func(t *testing.T, path string) {
			appendFile(t, path, numbered(10, 15))
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path+RotatedSuffix, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(numbered(15, 20)), 0o644); err != nil {
				t.Fatal(err)
			}
		}, wantLines(10, 20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			state := t.TempDir()
			path := filepath.Join(dir, "mail.log")
			appendFile(t, path, "before start\n")
			f1 := &Follower{Path: path, StateDir: state, PollInterval: 5 * time.Millisecond}
			c1 := start(t, f1)
			appendFile(t, path, numbered(0, 10))
			if got := c1.waitN(t, 10); !equal(got, wantLines(0, 10)) {
				t.Fatalf("first run lines = %q", got)
			}
			f1.Stop()

			tc.down(t, path)
			c2 := start(t, &Follower{Path: path, StateDir: state, PollInterval: 5 * time.Millisecond})
			appendFile(t, path, "marker\n")
			want := append(append([]string{}, tc.resume...), "marker")
			if got := c2.waitN(t, len(want)); !equal(got, want) {
				t.Fatalf("after restart lines = %q, want %q", got, want)
			}
		})
	}
}

func TestBacklogBound(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		down     time.Duration
		maxBytes int64
		written  int // lines written while down (12 bytes each)
		read     bool
	}{
		{"within backlog", 5 * time.Minute, 0, 20, true},
		{"too old", DefaultBacklog + time.Minute, 0, 20, false},
		{"too large", time.Minute, 100, 20, false},
		{"just fits", time.Minute, 240, 20, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			path := filepath.Join(t.TempDir(), "mail.log")
			appendFile(t, path, "")
			now := t0
			f1 := &Follower{Path: path, StateDir: state, PollInterval: 5 * time.Millisecond, Now: func() time.Time { return now }}
			c1 := start(t, f1)
			appendFile(t, path, "first\n")
			c1.waitN(t, 1)
			f1.Stop()

			appendFile(t, path, numbered(0, tc.written))
			later := t0.Add(tc.down)
			c2 := start(t, &Follower{Path: path, StateDir: state, PollInterval: 5 * time.Millisecond,
				MaxBacklogBytes: tc.maxBytes, Now: func() time.Time { return later }})
			appendFile(t, path, "marker\n")
			want := []string{"marker"}
			if tc.read {
				want = append(wantLines(0, tc.written), "marker")
			}
			if got := c2.waitN(t, len(want)); !equal(got, want) {
				t.Fatalf("after %v down lines = %q, want %q", tc.down, got, want)
			}
		})
	}
}

func TestLongLinesAndInvalidUTF8(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mail.log")
	appendFile(t, path, "")
	c := start(t, &Follower{Path: path, MaxLineBytes: 16, PollInterval: 5 * time.Millisecond})
	long := strings.Repeat("A", 100)
	appendFile(t, path, "short\n"+long[:40])
	appendFile(t, path, long[40:]+"\n\xff\xfe bad \xc3\n"+strings.Repeat("B", 16)+"\nafter\n")
	c.waitN(t, 5)
	c.mu.Lock()
	defer c.mu.Unlock()
	want := []Line{
		{Text: []byte("short")},
		{Text: []byte(long[:16]), Truncated: true},
		{Text: []byte("\xff\xfe bad \xc3")},
		{Text: []byte(strings.Repeat("B", 16))},
		{Text: []byte("after")},
	}
	for i, w := range want {
		if got := c.lines[i]; string(got.Text) != string(w.Text) || got.Truncated != w.Truncated || got.Path != path {
			t.Errorf("line %d = %q truncated=%v path=%s, want %q truncated=%v", i, got.Text, got.Truncated, got.Path, w.Text, w.Truncated)
		}
	}
}

// TestFeedChunks splits the same input at every byte: the lines must not
// depend on how reads cut the stream.
func TestFeedChunks(t *testing.T) {
	in := "ab\n" + strings.Repeat("x", 20) + "\n\ncd\n" + strings.Repeat("y", 9) + "\n"
	want := []string{"ab", strings.Repeat("x", 8), "", "cd", strings.Repeat("y", 8)}
	wantTrunc := []bool{false, true, false, false, true}
	for cut := 1; cut <= len(in); cut++ {
		var got []Line
		w := &follow{maxLine: 8, deliver: func(l Line) { got = append(got, l) }}
		for i := 0; i < len(in); i += cut {
			w.feed([]byte(in[i:min(i+cut, len(in))]))
		}
		if len(got) != len(want) {
			t.Fatalf("chunks of %d: %d lines, want %d", cut, len(got), len(want))
		}
		for i := range want {
			if string(got[i].Text) != want[i] || got[i].Truncated != wantTrunc[i] {
				t.Errorf("chunks of %d: line %d = %q/%v, want %q/%v", cut, i, got[i].Text, got[i].Truncated, want[i], wantTrunc[i])
			}
		}
		if w.committed != int64(len(in)) {
			t.Errorf("chunks of %d: committed %d, want %d", cut, w.committed, len(in))
		}
	}
}

func TestMissingAtStartThenCreated(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "mail.log")
			f := &Follower{Path: path, NoNotify: m.noNotify, PollInterval: m.poll}
			c := start(t, f)
			if err := f.Health(); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("Health() with the file missing = %v, want not exist", err)
			}
			appendFile(t, path, "first\nsecond\n")
			if got := c.waitN(t, 2); !equal(got, []string{"first", "second"}) {
				t.Fatalf("lines = %q, want the whole new file", got)
			}
			if err := f.Health(); err != nil {
				t.Fatalf("Health() once read = %v, want nil", err)
			}
		})
	}
}

func TestUnreadableSource(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "dangling.log")
	if err := os.Symlink(filepath.Join(dir, "nowhere"), link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		path string
		is   error
	}{
		{"directory", dir, ErrNotRegular},
		{"dangling symlink", link, fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &Follower{Path: tc.path}
			err := f.Start(context.Background(), func(Line) {})
			if !errors.Is(err, tc.is) {
				f.Stop()
				t.Fatalf("Start(%s) = %v, want %v", tc.path, err, tc.is)
			}
			if h := f.Health(); h == nil {
				t.Errorf("Health() after a failed Start = nil, want the error")
			}
		})
	}
}

func TestStopOnContextAndTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mail.log")
	appendFile(t, path, "")
	ctx, cancel := context.WithCancel(context.Background())
	f := &Follower{Path: path}
	if err := f.Start(ctx, func(Line) {}); err != nil {
		t.Fatal(err)
	}
	cancel()
	f.Stop()
	f.Stop()
}

// TestRenamedFileStillWritten: a writer that has not reopened its log yet
// goes on writing to the renamed file; those lines come before the new
// file's.
func TestRenamedFileStillWritten(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "mail.log")
			old, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			c := start(t, &Follower{Path: path, NoNotify: m.noNotify, PollInterval: m.poll})
			if _, err := old.WriteString(numbered(0, 10)); err != nil {
				t.Fatal(err)
			}
			c.waitN(t, 10)
			if err := os.Rename(path, path+RotatedSuffix); err != nil {
				t.Fatal(err)
			}
			if _, err := old.WriteString(numbered(10, 20) + "no newline at the end"); err != nil {
				t.Fatal(err)
			}
			c.waitN(t, 20)
			appendFile(t, path, numbered(20, 30))
			want := append(append(wantLines(0, 20), "no newline at the end"), wantLines(20, 30)...)
			if got := c.waitN(t, len(want)); !equal(got, want) {
				t.Fatalf("lines = %q, want %q", got, want)
			}
		})
	}
}

// TestPollingWhenInotifyFails: the log's directory does not exist yet, so
// inotify cannot watch it; the poll finds the file once both are made.
func TestPollingWhenInotifyFails(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not-yet")
	path := filepath.Join(dir, "mail.log")
	f := &Follower{Path: path, PollInterval: 5 * time.Millisecond}
	c := start(t, f)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	appendFile(t, path, "first\n")
	if got := c.waitN(t, 1); !equal(got, []string{"first"}) {
		t.Fatalf("lines = %q, want [first]", got)
	}
}

// TestHealthWhenSourceTurnsUnreadable: a log replaced by a directory is
// reported by Health, not ignored.
func TestHealthWhenSourceTurnsUnreadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mail.log")
	appendFile(t, path, "")
	f := &Follower{Path: path, PollInterval: 5 * time.Millisecond}
	start(t, f)
	if err := f.Health(); err != nil {
		t.Fatalf("Health() = %v, want nil", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	// Bounded wait for the follower to poll (no event to wait on).
	deadline := time.After(wait)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !errors.Is(f.Health(), ErrNotRegular) {
		select {
		case <-deadline:
			t.Fatalf("Health() = %v after %v, want %v", f.Health(), wait, ErrNotRegular)
		case <-tick.C:
		}
	}
}

func TestFromStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mail.log")
	appendFile(t, path, "already there\n")
	c := start(t, &Follower{Path: path, FromStart: true, PollInterval: 5 * time.Millisecond})
	appendFile(t, path, "new\n")
	if got := c.waitN(t, 2); !equal(got, []string{"already there", "new"}) {
		t.Fatalf("lines = %q, want the whole file", got)
	}
}
