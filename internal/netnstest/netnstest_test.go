package netnstest

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

// testConfig puts the server on 10.199.0.1 and fd00:199::1, the client on
// 10.199.0.2 and fd00:199::2.
func testConfig() Config {
	p := netip.MustParsePrefix
	return Config{
		Name:        "mgnstest",
		Server:      []netip.Prefix{p("10.199.0.1/24"), p("fd00:199::1/64")},
		Client:      []netip.Prefix{p("10.199.0.2/24"), p("fd00:199::2/64")},
		Ports:       []int{25, 8080},
		DropTimeout: 300 * time.Millisecond,
	}
}

func TestNet(t *testing.T) {
	n := New(t, testConfig())
	cli4, cli6 := netip.MustParseAddr("10.199.0.2"), netip.MustParseAddr("fd00:199::2")
	for _, src := range []netip.Addr{cli4, cli6} {
		n.WantOpen(t, src, 25)
		n.WantOpen(t, src, 8080)
		// Nobody listens: refused at once, which is neither open nor dropped.
		if err := n.Dial(src, 9, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("Dial(%v, 9) = %v, want connection refused", src, err)
		}
	}

	// A firewall of our own drops the IPv4 client's SYNs to port 25.
	n.MustExec(t, "nft", "add", "table", "inet", "byhand")
	n.MustExec(t, "nft", "add", "chain", "inet", "byhand", "input", "{ type filter hook input priority 0; policy accept; }")
	n.MustExec(t, "nft", "add", "rule", "inet", "byhand", "input", "ip", "saddr", cli4.String(), "tcp", "dport", "25", "drop")
	n.WaitDropped(t, cli4, 25, 5*time.Second)
	n.WantOpen(t, cli4, 8080)
	n.WantOpen(t, cli6, 25)
	if !n.Dropped(t, cli4, 25) {
		t.Errorf("Dropped(%v, 25) = false, want true", cli4)
	}
	n.MustExec(t, "nft", "delete", "table", "inet", "byhand")
	n.WaitOpen(t, cli4, 25, 5*time.Second)
	if n.Dropped(t, cli4, 25) {
		t.Errorf("Dropped(%v, 25) = true after the table is gone", cli4)
	}

	// A blackhole route for the IPv4 client in the server: the SYN arrives
	// and passes every filter, the SYN-ACK goes nowhere, the attempt times
	// out. That is not the firewall dropping it.
	n.MustExec(t, "ip", "route", "add", "blackhole", cli4.String()+"/32")
	if n.Dropped(t, cli4, 25) {
		t.Errorf("Dropped(%v, 25) = true for a timeout whose SYN passed the firewall", cli4)
	}
	n.MustExec(t, "ip", "route", "del", "blackhole", cli4.String()+"/32")
	n.WaitOpen(t, cli4, 25, 5*time.Second)

	if out, err := n.Exec("false"); err == nil {
		t.Errorf("Exec(false) = %q, nil; want an error", out)
	}
}

// A Thread's sockets and lookups are those of its namespace.
func TestEnter(t *testing.T) {
	n := New(t, testConfig())
	for ns, want := range map[string]string{n.Server: "10.199.0.1", n.Client: "10.199.0.2"} {
		var addrs []net.Addr
		var err error
		Enter(t, ns).Do(func() { addrs, err = net.InterfaceAddrs() })
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(addrs, func(a net.Addr) bool {
			p, err := netip.ParsePrefix(a.String())
			return err == nil && p.Addr().String() == want
		}) {
			t.Errorf("addresses in %s = %v, want %v among them", ns, addrs, want)
		}
	}
	// The server's loopback is its own: port 25 listens there, not here.
	var c net.Conn
	var err error
	Enter(t, n.Server).Do(func() { c, err = net.DialTimeout("tcp", "127.0.0.1:25", time.Second) })
	if err != nil {
		t.Fatalf("dial 127.0.0.1:25 in %s: %v", n.Server, err)
	}
	c.Close()
}

// The namespaces go when the test ends (t.Cleanup, which also runs after a
// failure).
func TestCleanup(t *testing.T) {
	var names []string
	t.Run("pass", func(t *testing.T) {
		n := New(t, testConfig())
		names = append(names, n.Server, n.Client)
	})
	t.Run("again", func(t *testing.T) {
		n := New(t, testConfig())
		names = append(names, n.Server, n.Client)
	})
	if len(names) != 4 {
		t.Fatalf("got %d namespaces, want 4", len(names))
	}
	for _, name := range names {
		if _, err := os.Stat(Path(name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s still there after its test: %v", name, err)
		}
	}
}
