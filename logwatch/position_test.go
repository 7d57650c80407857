package logwatch

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadPositionRejectsDamage(t *testing.T) {
	for _, tc := range []struct {
		name, content, wantErr string
	}{
		{"garbage", "{not json", "invalid character"},
		{"unknown field", `{"path":"/x","offset":1,"extra":2}`, "unknown field"},
		{"negative offset", `{"path":"/x","offset":-1}`, "out of range"},
		{"head too long", `{"path":"/x","offset":1,"head_len":100000}`, "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(stateFile(dir, "/x"), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, ok, err := loadPosition(dir, "/x")
			if err == nil || ok || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("loadPosition(%q) = ok %v, %v; want an error containing %q", tc.content, ok, err, tc.wantErr)
			}
		})
	}
}

func TestPositionSavedOnStop(t *testing.T) {
	state := t.TempDir()
	path := filepath.Join(t.TempDir(), "mail.log")
	appendFile(t, path, "")
	at := time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC)
	f := &Follower{Path: path, StateDir: state, PollInterval: 5 * time.Millisecond, Now: func() time.Time { return at }}
	c := start(t, f)
	appendFile(t, path, numbered(0, 3)+"partial")
	c.waitN(t, 3)
	f.Stop()
	p, ok, err := loadPosition(state, path)
	if err != nil || !ok {
		t.Fatalf("loadPosition = %v, %v", ok, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	id := idOf(fi)
	// The offset is after the last complete line: "partial" is read again.
	if p.Path != path || p.Offset != 36 || p.Dev != id.dev || p.Ino != id.ino || !p.SavedAt.Equal(at) || p.HeadLen != 43 {
		t.Errorf("position = %+v, want path %s offset 36 dev/ino %v head_len 43 saved_at %v", p, path, id, at)
	}
	leftovers, _ := filepath.Glob(filepath.Join(state, ".logwatch-*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left in the state dir: %v", leftovers)
	}
}

func TestDamagedPositionStartsAtEnd(t *testing.T) {
	state := t.TempDir()
	path := filepath.Join(t.TempDir(), "mail.log")
	appendFile(t, path, numbered(0, 5))
	if err := os.WriteFile(stateFile(state, path), []byte("{damaged"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := start(t, &Follower{Path: path, StateDir: state, FromStart: true, PollInterval: 5 * time.Millisecond})
	appendFile(t, path, "marker\n")
	if got := c.waitN(t, 1); !equal(got, []string{"marker"}) {
		t.Fatalf("lines = %q, want only marker (a damaged position starts at the end)", got)
	}
}
