package audit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store/memstore"
)

func TestUserMode(t *testing.T) {
	for _, tc := range []struct {
		mode       UserMode
		login, out string
	}{
		{UserPlain, " Alice@Example.ORG", "alice@example.org"},
		{UserHashed, "Alice@Example.ORG", UserHash("alice@example.org")},
		{UserOmit, "alice@example.org", ""},
		{UserHashed, "", ""},
	} {
		if got := tc.mode.User(tc.login); got != tc.out {
			t.Errorf("%s.User(%q) = %q, want %q", tc.mode, tc.login, got, tc.out)
		}
	}
	for _, tc := range []struct {
		mode         UserMode
		subject, out string
	}{
		{UserPlain, "user:alice@example.org", "user:alice@example.org"},
		{UserHashed, "user:alice@example.org", "user:" + UserHash("alice@example.org")},
		{UserHashed, "user+net:alice@example.org|2001:db8::/64", "user+net:" + UserHash("alice@example.org") + "|2001:db8::/64"},
		{UserOmit, "user:alice@example.org", "user:"},
		{UserOmit, "user+net:alice@example.org|192.0.2.0/24", "user+net:|192.0.2.0/24"},
		{UserHashed, "net:192.0.2.7/32", "net:192.0.2.7/32"},
	} {
		if got := tc.mode.Subject(tc.subject); got != tc.out {
			t.Errorf("%s.Subject(%q) = %q, want %q", tc.mode, tc.subject, got, tc.out)
		}
	}
	if h := UserHash("alice@example.org"); len(h) != 18 || !strings.HasPrefix(h, "h:") {
		t.Errorf("UserHash = %q, want h: and 16 hex digits", h)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"100MB", 100 << 20, true}, {"512kb", 512 << 10, true}, {"1GB", 1 << 30, true},
		{"4096", 4096, true}, {"10 B", 10, true},
		{"", 0, false}, {"-1MB", 0, false}, {"0", 0, false}, {"lots", 0, false}, {"1TB", 0, false},
	} {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestIDs(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := NewID()
		if !ValidID(id) || seen[id] {
			t.Fatalf("NewID() = %q: invalid or repeated", id)
		}
		seen[id] = true
	}
	for _, s := range []string{"", "ABCDEFGHIJ", "abc", "abcdefghij0"} {
		if ValidID(s) {
			t.Errorf("ValidID(%q) = true", s)
		}
	}
}

// TestFileRotation: past MaxSize the file rotates, Keep old files stay, and
// ReadFiles reads every kept record back, oldest first.
func TestFileRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	f, err := OpenFile(path, 600, 2)
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for i := range 20 {
		e := Event{V: Version, ID: fmt.Sprintf("id%08d", i), Kind: KindFailure, Addr: "192.0.2.7", Time: time.Unix(int64(i), 0).UTC()}
		b, err := Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		all = append(all, e.ID)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".1", path + ".2"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if fi.Size() > 600 {
			t.Errorf("%s is %d bytes, over the 600 max", p, fi.Size())
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Errorf("%s.3 exists; keep is 2", path)
	}
	var got []string
	if err := ReadFiles(path, func(e Event) error { got = append(got, e.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 || len(got) >= len(all) {
		t.Fatalf("read %d records back, want some but not all %d (the oldest rotated away)", len(got), len(all))
	}
	want := all[len(all)-len(got):]
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("ReadFiles = %v, want the newest %v in order", got, want)
	}
}

func TestReadBadLine(t *testing.T) {
	in := `{"v":1,"id":"aaaaaaaaaa","kind":"ban","time":"2026-01-01T00:00:00Z"}` + "\nnot json\n"
	n := 0
	err := Read(strings.NewReader(in), func(Event) error { n++; return nil })
	if err == nil || !strings.Contains(err.Error(), "line 2") || n != 1 {
		t.Errorf("Read = %v after %d records; want an error naming line 2 after 1", err, n)
	}
}

// TestRecorder: events reach the store's trails and the file, with ids,
// node and the user as configured.
func TestRecorder(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st, err := memstore.Open(memstore.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	f, err := OpenFile(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := NewRecorder(Options{Node: "mx1", Users: UserPlain, Store: st, File: f, Keep: 3, TTL: time.Hour,
		Now: func() time.Time { return now }})
	var ids []string
	for i := range 5 {
		ids = append(ids, r.Record(Event{Kind: KindFailure, Source: "dovecot", Protocol: "imap", Addr: "192.0.2.7",
			User: "Alice", Jails: []string{"dovecot"}, Count: i + 1,
			Subjects: []string{"net:192.0.2.7/32", "user:alice"}}))
	}
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	trail, err := st.Trail(t.Context(), "user:alice")
	if err != nil || len(trail) != 3 {
		t.Fatalf("Trail = %d records, %v; want the last 3", len(trail), err)
	}
	e, err := Unmarshal(trail[2])
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != ids[4] || e.Node != "mx1" || e.User != "alice" || e.Count != 5 || !e.Time.Equal(now) || e.V != Version {
		t.Errorf("last event = %+v; want id %s, node mx1, user alice, count 5", e, ids[4])
	}
	if b, _ := st.Record(t.Context(), ids[0]); b == nil {
		t.Errorf("Record(%s) = nil, want the first event", ids[0])
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, []byte("\n")); n != 5 {
		t.Errorf("file has %d lines, want 5", n)
	}
}
