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
	buf []byte
	n   int
	dl  time.Time // the connection's deadline, as last set
}

func (s *postfixSession) do(ctx context.Context, i int) (string, error) {
	s.buf = s.encode(s.buf[:0], i)
	s.n++
	end, capped := ctx.Deadline()
	if deadline, move := nextDeadline(time.Now(), s.dl, end, capped); move {
		s.c.SetDeadline(deadline)
		s.dl = deadline
	}
	if _, err := s.c.Write(s.buf); err != nil {
		return "", err
	}
	action, err := policyd.ReadReply(s.br, policyd.Limits{})
	if err != nil {
		return "", err
	}
	label, _, _ := strings.Cut(action, " ")
	return label, nil
}

// nextDeadline returns the I/O deadline of a request sent at now on a
// connection whose deadline was last set to last, and whether to set it. A
// request gets ioTimeout, or less when the run's I/O ends first (end, when
// capped). The deadline is moved when it would move by more than a second,
// not per request: each move is two runtime timer updates, a cost of the
// load tool's that would be taken from the server under test. Once the
// run's end caps it, it is set to that end exactly: the slack would
// otherwise keep the deadline up to a second short of it, and cut a request
// still in flight when the run stops, which then counts as the server's
// error.
func nextDeadline(now, last, end time.Time, capped bool) (time.Time, bool) {
	d := now.Add(ioTimeout)
	if capped && end.Before(d) {
		return end, !end.Equal(last)
	}
	return d, d.Before(last) || d.Sub(last) > time.Second
}

// encode appends request i to b: the recorded request (validated when it
// was read) in its order, with client_address taken round-robin from the
// clients, a recipient that changes with each request and, with users, an
// authenticated sender. It is written here rather than with Request.Set
// and WriteTo, which check every attribute and allocate per request: the
// load tool's own work would be taken from the server under test.
func (s *postfixSession) encode(b []byte, i int) []byte {
	users := s.p.users
	for name, value := range s.req.All() {
		b = append(b, name...)
		b = append(b, '=')
		switch {
		case name == "client_address":
			b = append(b, s.p.clients[i%len(s.p.clients)]...)
		case name == "recipient":
			b = append(b, "rcpt"...)
			b = strconv.AppendInt(b, int64(i), 10)
			b = append(b, "@example.org"...)
		case name == "recipient_count":
			b = strconv.AppendInt(b, int64(s.n%100), 10)
		case name == "sasl_method" && len(users) > 0:
			b = append(b, "PLAIN"...)
		case name == "sasl_username" && len(users) > 0:
			b = append(b, users[i%len(users)]...)
		default:
			b = append(b, value...)
		}
		b = append(b, '\n')
	}
	return append(b, '\n')
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
