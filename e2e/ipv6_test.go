package e2e

import (
	"context"
	"encoding/base64"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/netnstest"
)

var ban64Set = regexp.MustCompile(`set ban6_64_\S+ \{[^}]*elements = \{ fd00:202:: timeout`)

// IPv6 end to end: Postfix, Dovecot and mailguard (nftables) in a server
// namespace, Postfix and Dovecot listening on fd00:202::1; an attacker
// rotating through fd00:202::/64 in a client namespace:
//
//	client  fd00:202::a ::b ::c ::d /64 (the attacker)   fd00:203::2/64 (a bystander)
//	server  fd00:202::1/64 fd00:203::1/64: Postfix, Dovecot (ports outside
//	        every jail's), listeners on 993 (imaps, in the dovecot jail's
//	        ports) and 8080; mailguard on the namespace's 127.0.0.1
//
// Failures from three addresses of the /64, over IMAP and SMTP AUTH, ban
// the /64: a fourth address is refused in-protocol by Dovecot and Postfix,
// and dropped by the kernel on the jail's ports; the bystander is not.
// Postfix and Dovecot are stock Debian plus contrib (SMTP AUTH over the
// submission service); the RCPTs go to a local address, since Debian's
// smtpd_relay_restrictions, checked first, refuse relaying before the
// policy is asked.
func TestIPv6PrefixEndToEnd(t *testing.T) {
	var (
		srv6      = netip.MustParseAddr("fd00:202::1")
		attackers = []netip.Addr{netip.MustParseAddr("fd00:202::a"), netip.MustParseAddr("fd00:202::b"),
			netip.MustParseAddr("fd00:202::c"), netip.MustParseAddr("fd00:202::d")}
		bystander = netip.MustParseAddr("fd00:203::2")
	)
	const (
		imaps, other = 993, 8080
		within       = 15 * time.Second // bounds each wait for the kernel to change
	)
	clients := []netip.Prefix{netip.PrefixFrom(bystander, 64)}
	for _, a := range attackers {
		clients = append(clients, netip.PrefixFrom(a, 64))
	}
	n := netnstest.New(t, netnstest.Config{
		Name:   "mgv6",
		Server: []netip.Prefix{netip.PrefixFrom(srv6, 64), netip.MustParsePrefix("fd00:203::1/64")},
		Client: clients,
		Ports:  []int{imaps, other},
	})
	d := NewDaemon(t, "dovecot.api_header="+testAPIKey, "firewall.backend=nftables", "jails.dovecot.maxretry=3", "dovecot.tarpit.start=50")
	d.NetNS = n.Server
	d.Start()
	at := place{ns: n.Server, th: netnstest.Enter(t, n.Server), host: srv6.String()}
	dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{SASLSocket: PostfixSASLSocket(t), At: at})
	pf := StartPostfix(t, d.Postfix, PostfixOptions{At: at})

	cli := netnstest.Enter(t, n.Client)
	dial := func(src netip.Addr, addr string) net.Conn {
		t.Helper()
		dl := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}
		c, err := cli.DialContext(context.Background(), dl, "tcp", addr)
		if err != nil {
			t.Fatalf("dial %s from %v: %v", addr, src, err)
		}
		return c
	}
	imap := func(src netip.Addr, pass string) string {
		t.Helper()
		return imapLoginOn(t, dial(src, dv.IMAP), testUser, pass)
	}
	smtp := func(src netip.Addr, addr string) *SMTP {
		t.Helper()
		s := smtpOn(t, dial(src, addr))
		s.Cmd(t, "EHLO client.example.net")
		return s
	}

	// Three failures from three addresses of the /64, over both servers.
	if r := imap(attackers[0], "wrong"); !strings.HasPrefix(r, "a1 NO [AUTHENTICATIONFAILED]") {
		t.Fatalf("wrong IMAP password from %v = %q", attackers[0], r)
	}
	s := smtp(attackers[1], pf.Submission)
	s.StartTLS(t)
	if r := s.Cmd(t, "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+testUser+"\x00wrong"))); !strings.HasPrefix(r, "535") {
		t.Fatalf("wrong SMTP AUTH from %v = %q, want 535", attackers[1], r)
	}
	s.Cmd(t, "QUIT")
	n.WantOpen(t, attackers[3], imaps) // two failures: not yet
	if r := imap(attackers[2], "wrong"); !strings.HasPrefix(r, "a1 NO [AUTHENTICATIONFAILED]") {
		t.Fatalf("wrong IMAP password from %v = %q", attackers[2], r)
	}

	// A fourth address of the /64, never seen before: refused by both
	// servers in-protocol (their ports are in no jail's) ...
	if r := imap(attackers[3], testPassword); !strings.HasPrefix(r, "a1 NO [ALERT]") {
		t.Errorf("right IMAP password from %v in the banned /64 = %q, want NO [ALERT]", attackers[3], r)
	}
	s = smtp(attackers[3], pf.Addr)
	s.Cmd(t, "MAIL FROM:<a@example.net>")
	if r := s.Cmd(t, "RCPT TO:<postmaster@mx.example.org>"); !strings.HasPrefix(r, "421 4.7.1") {
		t.Errorf("RCPT from %v in the banned /64 = %q, want 421 4.7.1", attackers[3], r)
	}
	// ... and dropped by the kernel on the jail's ports only.
	n.WaitDropped(t, attackers[3], imaps, within)
	n.WantDropped(t, attackers[0], imaps)
	n.WantOpen(t, attackers[3], other)
	if out := d.MustCLI("firewall", "list", "--backend", "nftables"); !strings.Contains(out, "fd00:202::/64") {
		t.Errorf("firewall list lacks fd00:202::/64:\n%s", out)
	}
	// The /64 is one element (its network address) of a set of /64s.
	if out := n.MustExec(t, "nft", "list", "table", "inet", "mailguard"); !ban64Set.MatchString(out) {
		t.Errorf("no /64 set of table inet mailguard holds fd00:202:: alone:\n%s", out)
	}
	out := d.MustCLI("status", "dovecot")
	if !strings.Contains(out, "fd00:202::/64") || !strings.Contains(out, "imap 2, smtp 1") {
		t.Errorf("status dovecot lacks the /64 or its 2 imap and 1 smtp failures:\n%s", out)
	}

	// The bystander, in another /64 on the same link, is untouched.
	n.WantOpen(t, bystander, imaps)
	if r := imap(bystander, testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Errorf("IMAP login from the bystander %v = %q, want OK", bystander, r)
	}
	s = smtp(bystander, pf.Addr)
	s.Cmd(t, "MAIL FROM:<a@example.net>")
	if r := s.Cmd(t, "RCPT TO:<postmaster@mx.example.org>"); !strings.HasPrefix(r, "250") {
		t.Errorf("RCPT from the bystander %v = %q, want 250", bystander, r)
	}

	d.MustCLI("unban", "fd00:202::/64")
	n.WaitOpen(t, attackers[3], imaps, within)
	if r := imap(attackers[3], testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Errorf("after unban, IMAP login from %v = %q, want OK", attackers[3], r)
	}
}
