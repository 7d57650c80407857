package firewall

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// testNet is two network namespaces joined by a veth pair: a server running
// TCP listeners and the firewall under test, and a client dialling it.
//
//	client  10.200.0.2/24  fd00:200::2/64 fd00:200::3/64
//	server  10.200.0.1/24  fd00:200::1/64   listening on 993 and 8080
type testNet struct {
	server, client string // namespace names
	serverPath     string // /run/netns/NAME, for Options.NetNS
	clientNS       *nsThread
}

var (
	srv4  = netip.MustParseAddr("10.200.0.1")
	cli4  = netip.MustParseAddr("10.200.0.2")
	srv6  = netip.MustParseAddr("fd00:200::1")
	cli6a = netip.MustParseAddr("fd00:200::2")
	cli6b = netip.MustParseAddr("fd00:200::3")
)

const (
	mailPort  = 993
	otherPort = 8080
)

// newTestNet builds the namespaces and removes them when the test ends,
// whatever happens.
func newTestNet(t *testing.T) *testNet {
	t.Helper()
	testenv.Root(t)
	ip := testenv.Command(t, "ip")
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	n := &testNet{server: "mgtest-" + id + "-s", client: "mgtest-" + id + "-c"}
	n.serverPath = "/run/netns/" + n.server
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{n.server, n.client} {
		run("netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command(ip, "netns", "del", ns).Run() })
	}
	vs, vc := "mgs"+id[:6], "mgc"+id[:6]
	run("link", "add", vs, "netns", n.server, "type", "veth", "peer", "name", vc, "netns", n.client)
	for _, c := range [][]string{
		{n.server, "link", "set", "lo", "up"},
		{n.server, "link", "set", vs, "up"},
		{n.server, "addr", "add", "10.200.0.1/24", "dev", vs},
		{n.server, "addr", "add", "fd00:200::1/64", "dev", vs, "nodad"},
		{n.client, "link", "set", "lo", "up"},
		{n.client, "link", "set", vc, "up"},
		{n.client, "addr", "add", "10.200.0.2/24", "dev", vc},
		{n.client, "addr", "add", "fd00:200::2/64", "dev", vc, "nodad"},
		{n.client, "addr", "add", "fd00:200::3/64", "dev", vc, "nodad"},
	} {
		run(append([]string{"-n"}, c...)...)
	}
	srvNS, err := startNS(n.serverPath)
	if err != nil {
		t.Fatal(err)
	}
	defer srvNS.stop()
	for _, port := range []int{mailPort, otherPort} {
		var l net.Listener
		srvNS.do(func() { l, err = net.Listen("tcp", net.JoinHostPort("::", strconv.Itoa(port))) })
		if err != nil {
			t.Fatalf("listen in %s: %v", n.server, err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		})
		t.Cleanup(func() { l.Close(); wg.Wait() })
	}
	if n.clientNS, err = startNS("/run/netns/" + n.client); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.clientNS.stop)
	// Wait until the link carries traffic both ways.
	deadline := time.Now().Add(5 * time.Second)
	for _, src := range []netip.Addr{cli4, cli6a, cli6b} {
		for n.dial(src, otherPort, time.Second) != nil {
			if time.Now().After(deadline) {
				t.Fatalf("no connectivity from %v: %v", src, n.dial(src, otherPort, time.Second))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return n
}

// dial connects from src (a client address) to the server's address of the
// same family on port, and reports whether the handshake completed in time.
func (n *testNet) dial(src netip.Addr, port int, timeout time.Duration) error {
	dst := srv4
	if src.Is6() {
		dst = srv6
	}
	var err error
	n.clientNS.do(func() {
		d := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		var c net.Conn
		c, err = d.Dial("tcp", netip.AddrPortFrom(dst, uint16(port)).String())
		if err == nil {
			c.Close()
		}
	})
	return err
}

const blockedTimeout = 400 * time.Millisecond

// wantOpen fails unless src can connect to port.
func (n *testNet) wantOpen(t *testing.T, src netip.Addr, port int) {
	t.Helper()
	if err := n.dial(src, port, 2*time.Second); err != nil {
		t.Errorf("connect from %v to port %d: %v, want connected", src, port, err)
	}
}

// wantBlocked fails unless a connection from src to port times out.
func (n *testNet) wantBlocked(t *testing.T, src netip.Addr, port int) {
	t.Helper()
	err := n.dial(src, port, blockedTimeout)
	var ne net.Error
	if err == nil || !(errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("connect from %v to port %d: %v, want a timeout (dropped)", src, port, err)
	}
}

// waitOpen polls until src can connect to port again, or fails after limit.
func (n *testNet) waitOpen(t *testing.T, src netip.Addr, port int, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if n.dial(src, port, 200*time.Millisecond) == nil {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("port %d still blocked for %v after %v", port, src, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nsRun runs a command inside the server namespace.
func (n *testNet) nsRun(t *testing.T, args ...string) string {
	t.Helper()
	ip := testenv.Command(t, "ip")
	out, err := exec.Command(ip, append([]string{"netns", "exec", n.server}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func testLog(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(t.Output(), nil)) }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
