// Package testenv gates tests on what the machine has: a test that needs root,
// a real redis-server, Postfix, Dovecot or nftables skips with a reason on a
// laptop and fails when CI=true, where everything must really run.
package testenv

import (
	"crypto/rand"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
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

// Ports handed out by FreePort lie below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range, 32768-60999 on Debian), where listeners on
// port 0 and outgoing connections get theirs. A port taken from that range
// could be handed by the kernel to another test's listener (go test runs
// packages in parallel) between FreePort and the bind that uses it, and a
// client would then talk to the wrong server.
const (
	portLow  = 20000
	portHigh = 32767
)

var (
	portMu   sync.Mutex
	portUsed = map[int]bool{}
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, below
// the ephemeral range and never the same twice in one test process.
func FreePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for range 1000 {
		n, err := rand.Int(rand.Reader, big.NewInt(portHigh-portLow+1))
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		p := portLow + int(n.Int64())
		if portUsed[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		l.Close()
		portUsed[p] = true
		return p
	}
	t.Fatalf("free port: none free in %d-%d after 1000 tries", portLow, portHigh)
	return 0
}
