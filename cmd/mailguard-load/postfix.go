package main

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/mailguard/mailguard/policyd"
)

// recorded is a request Postfix 3.7 sent at RCPT time (a copy of
// policyd/testdata/postfix-3.7-rcpt-request.txt, without the final empty line).
//
//go:embed request.txt
var recorded []byte

const ioTimeout = 5 * time.Second // per request: a stuck server is an error, not a hang

// postfixLoad speaks the Postfix policy protocol: every request is the
// recorded one with client_address taken round-robin from clients, a
// recipient that changes with each request (so no two requests in a row are
// equal) and, if users is not empty, an authenticated sender at RCPT.
type postfixLoad struct {
	network, addr string
	base          *policyd.Request
	clients       []string
	users         []string
}

func newPostfixLoad(network, addr string, clients, users int) (*postfixLoad, error) {
	base, err := policyd.ReadRequest(bufio.NewReader(bytes.NewReader(append(recorded, '\n'))), policyd.Limits{})
	if err != nil {
		return nil, fmt.Errorf("embedded request: %w", err)
	}
	p := &postfixLoad{network: network, addr: addr, base: base, clients: testAddrs(clients)}
	for i := range users {
		p.users = append(p.users, fmt.Sprintf("user%d@example.org", i))
	}
	return p, nil
}

func (p *postfixLoad) open(ctx context.Context, w int) (session, error) {
	d := net.Dialer{Timeout: ioTimeout}
	c, err := d.DialContext(ctx, p.network, p.addr)
	if err != nil {
		return nil, err
	}
	r := p.base.Clone()
	r.Set("instance", fmt.Sprintf("load.%d", w))
	return &postfixSession{p: p, c: c, br: bufio.NewReader(c), req: r}, nil
}

type postfixSession struct {
	p   *postfixLoad
	c   net.Conn
	br  *bufio.Reader
	req *policyd.Request
	buf bytes.Buffer
	n   int
}

func (s *postfixSession) do(ctx context.Context, i int) (string, error) {
	s.req.Set("client_address", s.p.clients[i%len(s.p.clients)])
	s.req.Set("recipient", "rcpt"+strconv.Itoa(i)+"@example.org")
	s.req.Set("recipient_count", strconv.Itoa(s.n%100))
	if len(s.p.users) > 0 {
		s.req.Set("sasl_method", "PLAIN")
		s.req.Set("sasl_username", s.p.users[i%len(s.p.users)])
	}
	s.n++
	s.buf.Reset()
	if _, err := s.req.WriteTo(&s.buf); err != nil {
		return "", err
	}
	deadline := time.Now().Add(ioTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	s.c.SetDeadline(deadline)
	if _, err := s.c.Write(s.buf.Bytes()); err != nil {
		return "", err
	}
	action, err := policyd.ReadReply(s.br, policyd.Limits{})
	if err != nil {
		return "", err
	}
	label, _, _ := strings.Cut(action, " ")
	return label, nil
}

func (s *postfixSession) Close() error { return s.c.Close() }

// testAddrs returns n distinct client addresses from the documentation
// ranges: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, then 2001:db8::/32.
func testAddrs(n int) []string {
	var out []string
	for _, net := range []string{"192.0.2.", "198.51.100.", "203.0.113."} {
		for h := 1; h <= 254 && len(out) < n; h++ {
			out = append(out, net+strconv.Itoa(h))
		}
	}
	base := netip.MustParseAddr("2001:db8::").As16()
	for i := 0; len(out) < n; i++ {
		a := base
		// One address per /64, as attackers rotate: prefixes differ.
		a[4], a[5], a[6], a[7] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		a[15] = 1
		out = append(out, netip.AddrFrom16(a).String())
	}
	return out
}
