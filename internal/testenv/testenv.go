// Package testenv gates tests on what the machine has: a test that needs root,
// a real redis-server, Postfix, Dovecot or nftables skips with a reason on a
// laptop and fails when CI=true, where everything must really run.
package testenv

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// CI reports whether the tests run under CI=true.
func CI() bool {
	v, _ := strconv.ParseBool(os.Getenv("CI"))
	return v
}

// Missing skips t with reason, or fails it under CI=true.
func Missing(t testing.TB, reason string) {
	t.Helper()
	if CI() {
		t.Fatalf("CI=true but %s", reason)
	}
	t.Skip(reason)
}

// Long skips a long test under go test -short, except under CI=true, where
// -short is ignored: CI runs everything.
func Long(t testing.TB, reason string) {
	t.Helper()
	if testing.Short() && !CI() {
		t.Skip("-short: " + reason)
	}
}

// Root requires uid 0.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "test needs root")
	}
}

// Command returns the path of a program the test needs.
func Command(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
			if _, err := os.Stat(dir + "/" + name); err == nil {
				return dir + "/" + name
			}
		}
		Missing(t, name+" is not installed (make test installs it as root)")
	}
	return p
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
