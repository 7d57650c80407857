// Package netnstest builds, for tests only, a pair of network namespaces
// joined by a veth pair: a server namespace with TCP listeners, where a
// firewall is put to the test, and a client namespace whose connection
// attempts show what the server's kernel does to them. Nothing outside a
// _test.go file may import it.
//
// Whether a connection was dropped is read from the server kernel's own
// counters, not from a timeout alone: New installs a table inet netnstest
// that counts each client address's SYNs as they arrive (prerouting, before
// any filter) and as they pass the input filters (after every other input
// chain, iptables' included). A connection attempt that times out counts as
// dropped only if its SYN arrived and did not pass; a slow handshake on a
// loaded machine is not a drop.
//
// Everything needs root, the ip and nft programs and a kernel with network
// namespaces and nf_tables; New skips the test without them (fails it under
// CI=true).
// The namespaces are removed when the test ends, whether it passed or not.
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// Config describes the namespaces of one test. A zero duration takes the
// default named beside it.
type Config struct {
	// Name starts the namespace names, NAME-RANDOM-s and NAME-RANDOM-c, so
	// that a namespace left over by a killed test says whose it is.
	Name string
	// Server and Client are the addresses put on each end of the veth pair,
	// in the order given. A client dials the server's first address of its
	// own family.
	Server, Client []netip.Prefix
	// Ports are the TCP ports the server listens on (on ::, both families);
	// every connection is accepted and closed at once.
	Ports []int

	// Ready bounds New's wait for every client address to connect to every
	// port (10s).
	Ready time.Duration
	// OpenTimeout is how long WantOpen waits for a handshake (5s).
	OpenTimeout time.Duration
	// DropTimeout is how long a connection attempt waits before it counts as
	// dropped (500ms); an allowed handshake on the veth takes well under a
	// millisecond.
	DropTimeout time.Duration
	// PollTimeout is how long each attempt of WaitOpen waits (DropTimeout).
	PollTimeout time.Duration
}

// Net is the pair of namespaces built by New.
type Net struct {
	Server, Client string // namespace names, under /run/netns

	cfg        Config
	ip, nft    string     // the ip and nft programs
	cli        *Thread    // in Client: every Dial runs here
	dst4, dst6 netip.Addr // the server's first address of each family
}

// Path returns the file of the namespace called name, for setns or
// nftables.WithNetNSFd.
func Path(name string) string { return "/run/netns/" + name }

// New builds the namespaces, starts the listeners and waits until every
// client address reaches every port. When the test ends the listeners are
// closed and the namespaces removed, also after a failure in New itself.
func New(t testing.TB, cfg Config) *Net {
	t.Helper()
	testenv.Root(t)
	ip := testenv.Command(t, "ip")
	nft := testenv.Command(t, "nft")
	if cfg.Ready == 0 {
		cfg.Ready = 10 * time.Second
	}
	if cfg.OpenTimeout == 0 {
		cfg.OpenTimeout = 5 * time.Second
	}
	if cfg.DropTimeout == 0 {
		cfg.DropTimeout = 500 * time.Millisecond
	}
	if cfg.PollTimeout == 0 {
		cfg.PollTimeout = cfg.DropTimeout
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	id := hex.EncodeToString(rnd[:])
	n := &Net{Server: cfg.Name + "-" + id + "-s", Client: cfg.Name + "-" + id + "-c", cfg: cfg, ip: ip, nft: nft}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{n.Server, n.Client} {
		run("netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command(ip, "netns", "del", ns).Run() })
	}
	vs, vc := "mgs"+id, "mgc"+id
	run("link", "add", vs, "netns", n.Server, "type", "veth", "peer", "name", vc, "netns", n.Client)
	for _, end := range []struct {
		ns, dev string
		addrs   []netip.Prefix
	}{{n.Server, vs, cfg.Server}, {n.Client, vc, cfg.Client}} {
		run("-n", end.ns, "link", "set", "lo", "up")
		run("-n", end.ns, "link", "set", end.dev, "up")
		for _, a := range end.addrs {
			args := []string{"-n", end.ns, "addr", "add", a.String(), "dev", end.dev}
			if a.Addr().Is6() {
				args = append(args, "nodad") // usable at once
			}
			run(args...)
		}
	}
	for _, a := range slices.Backward(cfg.Server) {
		if a.Addr().Is6() {
			n.dst6 = a.Addr()
		} else {
			n.dst4 = a.Addr()
		}
	}

	if out, err := n.nftInput(countersRuleset(cfg.Client)); err != nil {
		testenv.Missing(t, fmt.Sprintf("nf_tables in a network namespace: installing the SYN counters: %v: %s", err, out))
	}

	srv := Enter(t, n.Server)
	for _, port := range cfg.Ports {
		var l net.Listener
		var err error
		srv.Do(func() { l, err = net.Listen("tcp", net.JoinHostPort("::", strconv.Itoa(port))) })
		if err != nil {
			t.Fatalf("listen in %s: %v", n.Server, err)
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
	n.cli = Enter(t, n.Client)

	// Wait until the link carries traffic both ways.
	deadline := time.Now().Add(cfg.Ready)
	for _, src := range cfg.Client {
		for _, port := range cfg.Ports {
			for n.Dial(src.Addr(), port, time.Second) != nil {
				if time.Now().After(deadline) {
					t.Fatalf("no connectivity from %v to port %d: %v", src.Addr(), port, n.Dial(src.Addr(), port, time.Second))
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	return n
}

// Dial connects from src (a client address) to the server's address of the
// same family on port, closes the connection, and returns the error of the
// attempt: nil when the handshake completed within timeout.
func (n *Net) Dial(src netip.Addr, port int, timeout time.Duration) error {
	dst := n.dst4
	if src.Is6() {
		dst = n.dst6
	}
	if !dst.IsValid() {
		return fmt.Errorf("netnstest: no server address of the family of %v", src)
	}
	d := &net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
	c, err := n.cli.DialContext(context.Background(), d, "tcp", netip.AddrPortFrom(dst, uint16(port)).String())
	if err == nil {
		c.Close()
	}
	return err
}

// Dropped reports whether the server's firewall dropped a connection attempt
// from src to port: the attempt timed out after DropTimeout, and the server's
// counters saw its SYN arrive and not pass the input filters. An attempt that
// times out although its SYN passed (a slow handshake) is not a drop. Any
// other error, or a SYN that never arrived, fails the test at once.
func (n *Net) Dropped(t testing.TB, src netip.Addr, port int) bool {
	t.Helper()
	before := n.syns(t, src)
	err := n.Dial(src, port, n.cfg.DropTimeout)
	var ne net.Error
	switch {
	case err == nil:
		return false
	case !errors.As(err, &ne) || !ne.Timeout():
		t.Fatalf("connect from %v to port %d: %v, want connected or timed out", src, port, err)
	}
	after := n.syns(t, src)
	switch {
	case after.arrived == before.arrived:
		t.Fatalf("connect from %v to port %d timed out and its SYN never reached the server", src, port)
	case after.passed != before.passed:
		t.Logf("netnstest: connect from %v to port %d timed out after %v, but its SYN passed the server's firewall: not a drop",
			src, port, n.cfg.DropTimeout)
		return false
	}
	return true
}

// synCount is what the server's counters saw of one client address's SYNs.
type synCount struct{ arrived, passed uint64 }

const counterTable = "netnstest"

// countersRuleset is the nft script of table inet netnstest: per client
// address, counter aI counts SYNs in prerouting (priority raw, before any
// filter) and pI those that passed input (priority filter + 100, after
// every other input chain).
func countersRuleset(clients []netip.Prefix) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", counterTable)
	for i := range clients {
		fmt.Fprintf(&b, "\tcounter a%d {}\n\tcounter p%d {}\n", i, i)
	}
	for _, c := range []struct{ name, hook, prio, prefix string }{
		{"arrive", "prerouting", "raw", "a"}, {"pass", "input", "filter + 100", "p"},
	} {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s priority %s; policy accept;\n", c.name, c.hook, c.prio)
		for i, a := range clients {
			fam := "ip"
			if a.Addr().Is6() {
				fam = "ip6"
			}
			fmt.Fprintf(&b, "\t\t%s saddr %s tcp flags & (syn | ack) == syn counter name %s%d\n", fam, a.Addr(), c.prefix, i)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// nftInput runs nft -f - with script in the server namespace.
func (n *Net) nftInput(script string) (string, error) {
	c := n.Command(n.nft, "-f", "-")
	c.Stdin = strings.NewReader(script)
	out, err := c.CombinedOutput()
	return string(out), err
}

var counterLine = regexp.MustCompile(`counter ([ap])(\d+) \{\s*packets (\d+) bytes`)

// syns reads the counters of src.
func (n *Net) syns(t testing.TB, src netip.Addr) synCount {
	t.Helper()
	i := slices.IndexFunc(n.cfg.Client, func(p netip.Prefix) bool { return p.Addr() == src })
	if i < 0 {
		t.Fatalf("netnstest: %v is not a client address", src)
	}
	out := n.MustExec(t, n.nft, "list", "counters", "table", "inet", counterTable)
	var c synCount
	found := 0
	for _, m := range counterLine.FindAllStringSubmatch(out, -1) {
		if m[2] != strconv.Itoa(i) {
			continue
		}
		v, _ := strconv.ParseUint(m[3], 10, 64)
		if m[1] == "a" {
			c.arrived = v
		} else {
			c.passed = v
		}
		found++
	}
	if found != 2 {
		t.Fatalf("netnstest: counters a%d and p%d not in:\n%s", i, i, out)
	}
	return c
}

// WantOpen fails the test unless src connects to port within OpenTimeout.
func (n *Net) WantOpen(t testing.TB, src netip.Addr, port int) {
	t.Helper()
	if err := n.Dial(src, port, n.cfg.OpenTimeout); err != nil {
		t.Errorf("connect from %v to port %d: %v, want connected", src, port, err)
	}
}

// WantDropped fails the test unless a connection from src to port is
// dropped (see Dropped).
func (n *Net) WantDropped(t testing.TB, src netip.Addr, port int) {
	t.Helper()
	if !n.Dropped(t, src, port) {
		t.Errorf("connect from %v to port %d: connected, want dropped", src, port)
	}
}

// WaitDropped polls until connections from src to port are dropped, and
// returns how long that took; after within it fails the test at once.
func (n *Net) WaitDropped(t testing.TB, src netip.Addr, port int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for !n.Dropped(t, src, port) {
		if time.Since(start) > within {
			t.Fatalf("connections from %v to port %d still accepted after %v", src, port, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// WaitOpen polls, each attempt waiting PollTimeout, until src connects to
// port, and returns how long that took; after within it fails the test at
// once.
func (n *Net) WaitOpen(t testing.TB, src netip.Addr, port int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for n.Dial(src, port, n.cfg.PollTimeout) != nil {
		if time.Since(start) > within {
			t.Fatalf("connections from %v to port %d still dropped after %v", src, port, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// Command returns a command that runs args inside the server namespace, with
// ip netns exec.
func (n *Net) Command(args ...string) *exec.Cmd {
	return exec.Command(n.ip, append([]string{"netns", "exec", n.Server}, args...)...)
}

// Exec runs args inside the server namespace and returns their combined
// output.
func (n *Net) Exec(args ...string) (string, error) {
	out, err := n.Command(args...).CombinedOutput()
	return string(out), err
}

// MustExec is Exec for a command that must succeed: else it fails the test
// at once.
func (n *Net) MustExec(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Exec(args...)
	if err != nil {
		t.Fatalf("ip netns exec %s %s: %v\n%s", n.Server, strings.Join(args, " "), err, out)
	}
	return out
}
