package listen

import (
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mailguard/mailguard/internal/testenv"
)

func TestUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	// A stale socket (its server gone) is replaced.
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()
	l, err := Listen("unix:"+path, 0o640, "")
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode = %v, %v; want 0640", fi.Mode().Perm(), err)
	}
	// A live one is not.
	if _, err := Listen("unix:"+path, 0o640, ""); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Fatalf("over a live socket: %v", err)
	}
	l.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after Close: %v", err)
	}
	// Nor a file that is not a socket.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Listen("unix:"+file, 0o600, ""); err == nil {
		t.Fatal("over a regular file: no error")
	}
	if _, err := Listen("unix:", 0o600, ""); err == nil {
		t.Fatal("empty path: no error")
	}
}

func TestGroup(t *testing.T) {
	testenv.Root(t)
	g, err := user.LookupGroup("nogroup")
	if err != nil {
		testenv.Missing(t, "no group nogroup")
	}
	path := filepath.Join(t.TempDir(), "g.sock")
	l, err := Listen("unix:"+path, 0o660, "nogroup")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, _ := os.Stat(path)
	gid, _ := strconv.Atoi(g.Gid)
	if got := fi.Sys().(*syscall.Stat_t).Gid; int(got) != gid {
		t.Errorf("socket gid = %d, want %d (nogroup)", got, gid)
	}
}

func TestTCP(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "inet:127.0.0.1:0"} {
		l, err := Listen(addr, 0, "")
		if err != nil {
			t.Fatalf("Listen(%q): %v", addr, err)
		}
		l.Close()
	}
}
