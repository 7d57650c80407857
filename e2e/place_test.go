package e2e

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"time"

	"github.com/mailguard/mailguard/internal/netnstest"
)

// place is where a test's Postfix or Dovecot runs. The zero value is this
// network namespace on 127.0.0.1.
type place struct {
	ns   string            // network namespace name: commands run in it (ip netns exec)
	th   *netnstest.Thread // a thread inside ns, for the readiness dials
	host string            // the address to listen on; empty: 127.0.0.1
}

func (p place) listen() string {
	if p.host == "" {
		return "127.0.0.1"
	}
	return p.host
}

// protocols is Postfix's inet_protocols for the listen address.
func (p place) protocols() string {
	if a, err := netip.ParseAddr(p.listen()); err == nil && a.Is6() {
		return "all"
	}
	return "ipv4"
}

func (p place) command(name string, args ...string) *exec.Cmd {
	if p.ns == "" {
		return exec.Command(name, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", p.ns, name}, args...)...)
}

func (p place) dial(addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if p.th == nil {
		return d.Dial("tcp", addr)
	}
	return p.th.DialContext(context.Background(), d, "tcp", addr)
}
