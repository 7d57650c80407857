package policyd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/listen"
)

// fakeGuard refuses the addresses inside banned (answering the prefix as the
// ban subject), finds every user in overUsers over the limit, fails
// Recipient for brokenUser (and every user if rcptErr), and calls hook (if
// set) before answering Check.
type fakeGuard struct {
	banned        []netip.Prefix
	overUsers     map[string]bool
	hook          func(ctx context.Context) error
	rcptErr       error
	checks, rcpts atomic.Int64
}

func (f *fakeGuard) Check(ctx context.Context, a netip.Addr, user string) (string, int, error) {
	f.checks.Add(1)
	if f.hook != nil {
		if err := f.hook(ctx); err != nil {
			return "", 0, err
		}
	}
	for _, p := range f.banned {
		if p.Contains(a) {
			return "net:" + p.String(), 0, nil
		}
	}
	return "", 0, nil
}

func (f *fakeGuard) Recipient(ctx context.Context, a netip.Addr, user string) (bool, error) {
	f.rcpts.Add(1)
	if user == brokenUser {
		return false, errors.New("store: connection refused")
	}
	return f.overUsers[user], f.rcptErr
}

var (
	bannedAddr = netip.MustParseAddr("192.0.2.66")
	bannedNet  = netip.MustParsePrefix("2001:db8:66:1::/64") // a banned IPv6 prefix
	overUser   = "spammer@example.org"
	brokenUser = "broken@example.org" // Recipient fails
)

func newFake() *fakeGuard {
	return &fakeGuard{
		banned: []netip.Prefix{netip.PrefixFrom(bannedAddr, 32), netip.MustParsePrefix("2001:db8::66/128"),
			bannedNet},
		overUsers: map[string]bool{overUser: true},
	}
}

func quietLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// start runs s on network ("tcp" or "unix") and returns the address to dial.
// Cleanup closes s and checks that Serve returned ErrServerClosed.
func start(t testing.TB, s *Server, network string) string {
	t.Helper()
	if s.Log == nil {
		s.Log = quietLog()
	}
	addr := "127.0.0.1:0"
	if network == "unix" {
		dir, err := os.MkdirTemp("", "policyd")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		addr = "unix:" + filepath.Join(dir, "policy.sock")
	}
	l, err := listen.Listen(addr, DefaultSocketMode, "")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-served:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve = %v, want ErrServerClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return l.Addr().String()
}

type client struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dial(t testing.TB, network, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

// ask sends raw and returns the action of the reply.
func (c *client) ask(raw string) string {
	c.t.Helper()
	c.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.c, raw); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	action, err := ReadReply(c.br, Limits{})
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	return action
}

// closed reports whether the server closed the connection without a reply.
func (c *client) closed() error {
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.br)
	if len(b) > 0 {
		return fmt.Errorf("got %q before the connection closed", b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("connection still open")
	}
	return nil // EOF, or a reset for unread data
}

// policyReq is a request like Postfix 3.7's at RCPT time, with overrides.
func policyReq(kv ...string) string {
	r := &Request{}
	for _, a := range [][2]string{
		{"request", "smtpd_access_policy"}, {"protocol_state", "RCPT"}, {"protocol_name", "ESMTP"},
		{"client_address", "192.0.2.1"}, {"client_name", "unknown"}, {"helo_name", "client.example.net"},
		{"sender", "a@example.net"}, {"recipient", "postmaster@example.org"}, {"recipient_count", "0"},
		{"instance", "2d14.6b08ac41.78d76.0"}, {"sasl_username", ""}, {"policy_context", ""},
	} {
		r.Set(a[0], a[1])
	}
	for i := 0; i+1 < len(kv); i += 2 {
		r.Set(kv[i], kv[i+1])
	}
	var b strings.Builder
	if _, err := r.WriteTo(&b); err != nil {
		panic(err)
	}
	return b.String()
}

func TestDecisions(t *testing.T) {
	tests := []struct {
		name         string
		kv           []string
		want         string
		checks, rcpt int64
	}{
		{"clean client", nil, "DUNNO", 1, 0},
		{"banned at CONNECT", []string{"client_address", "192.0.2.66", "protocol_state", "CONNECT"}, DefaultRejectAction, 1, 0},
		{"banned at HELO", []string{"client_address", "192.0.2.66", "protocol_state", "HELO"}, DefaultRejectAction, 1, 0},
		{"banned at MAIL", []string{"client_address", "192.0.2.66", "protocol_state", "MAIL"}, DefaultRejectAction, 1, 0},
		{"banned at RCPT", []string{"client_address", "192.0.2.66"}, DefaultRejectAction, 1, 0},
		{"banned at DATA", []string{"client_address", "192.0.2.66", "protocol_state", "DATA"}, DefaultRejectAction, 1, 0},
		{"banned IPv6", []string{"client_address", "2001:db8::66"}, DefaultRejectAction, 1, 0},
		{"banned and authenticated", []string{"client_address", "192.0.2.66", "sasl_username", overUser}, DefaultRejectAction, 1, 0},
		{"authenticated under limit", []string{"sasl_username", "alice@example.org"}, "DUNNO", 1, 1},
		{"authenticated over limit", []string{"sasl_username", overUser}, DefaultDeferAction, 1, 1},
		{"over limit, lower-case state", []string{"sasl_username", overUser, "protocol_state", "rcpt"}, DefaultDeferAction, 1, 1},
		{"authenticated at DATA: not counted", []string{"sasl_username", overUser, "protocol_state", "DATA"}, "DUNNO", 1, 0},
		{"authenticated at END-OF-MESSAGE", []string{"sasl_username", overUser, "protocol_state", "END-OF-MESSAGE"}, "DUNNO", 1, 0},
		{"client_address unknown", []string{"client_address", "unknown"}, "DUNNO", 0, 0},
		{"client_address empty", []string{"client_address", ""}, "DUNNO", 0, 0},
		{"client_address junk", []string{"client_address", "192.0.2.1\r; DROP"}, "DUNNO", 0, 0},
		{"not an access policy request", []string{"request", "junk", "client_address", "192.0.2.66"}, "DUNNO", 0, 0},
	}
	for _, network := range []string{"tcp", "unix"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				g := newFake()
				c := dial(t, network, start(t, &Server{Guard: g}, network))
				if got := c.ask(policyReq(tt.kv...)); got != tt.want {
					t.Errorf("action = %q, want %q", got, tt.want)
				}
				if g.checks.Load() != tt.checks || g.rcpts.Load() != tt.rcpt {
					t.Errorf("guard calls: Check %d, Recipient %d; want %d, %d", g.checks.Load(), g.rcpts.Load(), tt.checks, tt.rcpt)
				}
			})
		}
	}
}

func TestManyRequestsConcurrentConns(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			g := newFake()
			addr := start(t, &Server{Guard: g}, network)
			const conns, perConn = 16, 200
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			for i := range conns {
				c := dial(t, network, addr)
				wg.Go(func() {
					for j := range perConn {
						ip, want := fmt.Sprintf("198.51.100.%d", j%200), "DUNNO"
						if j%7 == 0 {
							ip, want = bannedAddr.String(), DefaultRejectAction
						}
						c.c.SetDeadline(time.Now().Add(5 * time.Second))
						io.WriteString(c.c, policyReq("client_address", ip, "recipient_count", fmt.Sprint(j), "instance", fmt.Sprint(i)))
						got, err := ReadReply(c.br, Limits{})
						if err != nil || got != want {
							errs <- fmt.Errorf("conn %d request %d: %q, %v; want %q", i, j, got, err, want)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if n := g.checks.Load(); n != conns*perConn {
				t.Errorf("Check called %d times, want %d", n, conns*perConn)
			}
		})
	}
}

// Every malformed request closes its own connection, unanswered, while
// another connection keeps being served.
func TestMalformedClosesOnlyThatConn(t *testing.T) {
	tests := []struct {
		name string
		send string
		eof  bool // half-close after sending
	}{
		{"no equals", "request=smtpd_access_policy\nhello world\n\n", false},
		{"empty name", "=x\n\n", false},
		{"oversized line", "request=" + strings.Repeat("x", 300) + "\n\n", false},
		{"oversized line without newline", strings.Repeat("x", 10000), false},
		{"too many attributes", "a=1\n" + policyReq("x1", "", "x2", "", "x3", "", "x4", "", "x5", ""), false},
		{"repeated attribute", "client_address=1.2.3.4\nclient_address=192.0.2.1\n\n", false},
		{"binary junk", "\x00\x01\x02\xff\xfe\n\x89PNG\r\n\x1a\n\n", false},
		{"empty request", "\n", false},
		{"EOF mid-request", "request=smtpd_access_policy\nclient_address=192.0.2.1\n", true},
		{"EOF mid-line", "request=smtpd_access_policy\nclient_addr", true},
	}
	for _, network := range []string{"tcp", "unix"} {
		g := newFake()
		addr := start(t, &Server{Guard: g, MaxLineLen: 256, MaxAttrs: 16}, network)
		good := dial(t, network, addr)
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				bad := dial(t, network, addr)
				if got := bad.ask(policyReq()); got != "DUNNO" {
					t.Fatalf("first request: %q", got)
				}
				io.WriteString(bad.c, tt.send)
				if tt.eof {
					bad.c.(interface{ CloseWrite() error }).CloseWrite()
				}
				if err := bad.closed(); err != nil {
					t.Errorf("after %q: %v", tt.send, err)
				}
				if got := good.ask(policyReq("client_address", bannedAddr.String(), "recipient_count", tt.name)); got != DefaultRejectAction {
					t.Errorf("other connection: %q, want reject", got)
				}
				if got := dial(t, network, addr).ask(policyReq()); got != "DUNNO" {
					t.Errorf("new connection: %q", got)
				}
			})
		}
	}
}

// Control characters in a configured action never reach the wire, and the
// stream stays in step: one reply per request.
func TestReplyNeverEchoesCRLF(t *testing.T) {
	g := newFake()
	s := &Server{Guard: g, RejectAction: "421 4.7.1 go away\r\n\r\naction=DUNNO\n\n\x00"}
	c := dial(t, "tcp", start(t, s, "tcp"))
	for range 3 {
		c.c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c.c, policyReq("client_address", bannedAddr.String()))
		line, err := c.br.ReadString('\n')
		if err != nil || line != "action=421 4.7.1 go away    action=DUNNO\n" {
			t.Fatalf("reply line = %q, %v", line, err)
		}
		if end, err := c.br.ReadString('\n'); end != "\n" || err != nil {
			t.Fatalf("after the action: %q, %v; want the empty line", end, err)
		}
		if n := c.br.Buffered(); n != 0 {
			t.Fatalf("%d more bytes buffered after the reply", n)
		}
	}
}

func TestInvalidActionFailsServe(t *testing.T) {
	s := &Server{Guard: newFake(), DeferAction: "\r\n"}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err == nil || errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve with a blank DeferAction = %v, want an error", err)
	}
	if err := (&Server{}).Serve(l); err == nil {
		t.Error("Serve without Guard succeeded")
	}
}

func TestFailMode(t *testing.T) {
	const timeout = 100 * time.Millisecond
	storeDown := errors.New("store: connection refused")
	guards := []struct {
		name string
		g    func() *fakeGuard
	}{
		{"check error", func() *fakeGuard {
			g := newFake()
			g.hook = func(context.Context) error { return storeDown }
			return g
		}},
		{"recipient error", func() *fakeGuard { g := newFake(); g.rcptErr = storeDown; return g }},
		{"blocks until canceled", func() *fakeGuard {
			g := newFake()
			g.hook = func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }
			return g
		}},
		{"panics", func() *fakeGuard { g := newFake(); g.hook = func(context.Context) error { panic("boom") }; return g }},
	}
	for _, open := range []bool{true, false} {
		want := DefaultFailAction
		if open {
			want = "DUNNO"
		}
		for _, gg := range guards {
			t.Run(fmt.Sprintf("open=%v/%s", open, gg.name), func(t *testing.T) {
				c := dial(t, "tcp", start(t, &Server{Guard: gg.g(), FailOpen: open, Timeout: timeout}, "tcp"))
				for i := range 2 { // different requests: no repeat folding
					t0 := time.Now()
					if got := c.ask(policyReq("sasl_username", "alice@example.org", "recipient_count", fmt.Sprint(i))); got != want {
						t.Errorf("action = %q, want %q", got, want)
					}
					if d := time.Since(t0); d > timeout+time.Second {
						t.Errorf("answered in %v, timeout %v", d, timeout)
					}
				}
			})
		}
	}
}

// A Guard that ignores its context is still answered within Timeout; its
// connection gets the fail answer at once until the call returns, and Close
// waits for it.
func TestGuardIgnoringContext(t *testing.T) {
	const timeout = 50 * time.Millisecond
	release, returned := make(chan struct{}), make(chan struct{}, 10)
	g := newFake()
	var stuck atomic.Bool
	stuck.Store(true)
	g.hook = func(context.Context) error {
		if stuck.Load() {
			<-release
			returned <- struct{}{}
		}
		return nil
	}
	c := dial(t, "tcp", start(t, &Server{Guard: g, Timeout: timeout}, "tcp"))
	t0 := time.Now()
	if got := c.ask(policyReq()); got != DefaultFailAction {
		t.Errorf("stuck guard: %q, want fail action", got)
	}
	if got := c.ask(policyReq("recipient", "other@example.org")); got != DefaultFailAction {
		t.Errorf("while the call is stuck: %q, want fail action", got)
	}
	if d := time.Since(t0); d > timeout+time.Second {
		t.Errorf("two answers took %v", d)
	}
	if n := g.checks.Load(); n != 1 {
		t.Errorf("Check called %d times while stuck, want 1", n)
	}
	stuck.Store(false)
	close(release)
	<-returned
	deadline := time.Now().Add(5 * time.Second)
	for c.ask(policyReq("recipient_count", fmt.Sprint(time.Now().UnixNano()))) != "DUNNO" {
		if time.Now().After(deadline) {
			t.Fatal("connection never recovered after the guard returned")
		}
	}
}

// At MaxConns a new connection closes the one that has waited longest for
// a request, those that never sent one first; only when every connection is
// busy with a request is the new one closed.
func TestMaxConnsClosesLongestIdle(t *testing.T) {
	s := &Server{Guard: newFake(), MaxConns: 2}
	addr := start(t, s, "tcp")
	a, b := dial(t, "tcp", addr), dial(t, "tcp", addr)
	a.ask(policyReq())
	listed(t, s, 1, 1)
	b.ask(policyReq()) // a has now waited longer than b
	listed(t, s, 0, 2)
	c := dial(t, "tcp", addr)
	if got := c.ask(policyReq("client_address", bannedAddr.String())); got != DefaultRejectAction {
		t.Errorf("new connection at MaxConns: %q, want reject", got)
	}
	listed(t, s, 0, 2) // c after b
	if err := a.closed(); err != nil {
		t.Errorf("longest-idle connection: %v, want closed", err)
	}
	if got := b.ask(policyReq()); got != "DUNNO" {
		t.Errorf("other idle connection: %q", got)
	}
	listed(t, s, 0, 2)

	// A connection that never sent a request goes before one that did,
	// however long that one has waited.
	silent := dial(t, "tcp", addr) // closes c, idle longest
	if err := c.closed(); err != nil {
		t.Errorf("c: %v, want closed", err)
	}
	d := dial(t, "tcp", addr)
	if got := d.ask(policyReq()); got != "DUNNO" {
		t.Errorf("d: %q", got)
	}
	if err := silent.closed(); err != nil {
		t.Errorf("silent connection: %v, want closed before the served ones", err)
	}
	if got := b.ask(policyReq()); got != "DUNNO" {
		t.Errorf("b after d came: %q, want it still served", got)
	}
}

// listed waits until fresh connections wait for their first request and
// idle ones for a further one (a connection lists itself just after writing
// its reply, which the client may see first).
func listed(t *testing.T, s *Server, fresh, idle int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		f, i := s.fresh.Len(), s.idle.Len()
		s.mu.Unlock()
		if f == fresh && i == idle {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d fresh and %d idle connections, want %d and %d", f, i, fresh, idle)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMaxConnsAllBusy(t *testing.T) {
	g := newFake()
	inCall, release := make(chan struct{}, 2), make(chan struct{})
	g.hook = func(context.Context) error {
		inCall <- struct{}{}
		<-release
		return nil
	}
	addr := start(t, &Server{Guard: g, MaxConns: 2, Timeout: time.Minute}, "tcp")
	busy := []*client{dial(t, "tcp", addr), dial(t, "tcp", addr)}
	for _, c := range busy {
		io.WriteString(c.c, policyReq())
	}
	<-inCall
	<-inCall
	if err := dial(t, "tcp", addr).closed(); err != nil {
		t.Errorf("new connection with every slot busy: %v, want closed", err)
	}
	close(release)
	for i, c := range busy {
		c.c.SetDeadline(time.Now().Add(5 * time.Second))
		if got, err := ReadReply(c.br, Limits{}); got != "DUNNO" {
			t.Errorf("busy connection %d: %q, %v; want DUNNO", i, got, err)
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	addr := start(t, &Server{Guard: newFake(), IdleTimeout: 100 * time.Millisecond}, "tcp")
	idle := dial(t, "tcp", addr)
	idle.ask(policyReq())
	slow := dial(t, "tcp", addr)
	io.WriteString(slow.c, "request=smtpd_access_policy\nclient_address=192.0.2.1\n")
	for name, c := range map[string]*client{"idle": idle, "mid-request": slow} {
		t0 := time.Now()
		if err := c.closed(); err != nil {
			t.Errorf("%s connection: %v", name, err)
		}
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("%s connection closed after %v", name, d)
		}
	}
}

// The read deadline is moved lazily (only when it would move by more than a
// tenth of the idle timeout): a connection that keeps asking for longer than
// the idle timeout stays open, and is closed once it falls idle.
func TestIdleTimeoutMovesWithRequests(t *testing.T) {
	const idle = 200 * time.Millisecond
	addr := start(t, &Server{Guard: newFake(), IdleTimeout: idle}, "tcp")
	c := dial(t, "tcp", addr)
	end := time.Now().Add(3 * idle)
	n := 0
	for time.Now().Before(end) {
		if got := c.ask(policyReq()); got != ActionDunno {
			t.Fatalf("request %d: %q, want %s", n, got, ActionDunno)
		}
		n++
		time.Sleep(idle / 4)
	}
	if err := c.closed(); err != nil {
		t.Errorf("after %d requests over %v, then idle: %v", n, 3*idle, err)
	}
}

// Folding the double call of smtpd_delay_reject: a recipient request equal to
// one just answered, on the same connection or another, counts once.
func TestRepeatedRequestCountedOnce(t *testing.T) {
	u := func(kv ...string) string { return policyReq(append([]string{"sasl_username", "u"}, kv...)...) }
	tests := []struct {
		name     string
		reqs     []string
		twoConns bool // alternate between two connections, as for two listings that differ
		want     int64
	}{
		{"single", []string{u()}, false, 1},
		{"pair", []string{u(), u()}, false, 1},
		{"pair on two connections", []string{u("policy_context", "client"), u("policy_context", "rcpt")}, true, 1},
		{"pair, other policy_context", []string{u("policy_context", "client"), u("policy_context", "rcpt")}, false, 1},
		{"three equal", []string{u(), u(), u()}, false, 2},
		{"four equal on two connections", []string{u(), u(), u(), u()}, true, 2},
		{"two recipients", []string{u("recipient", "a@example.org"), u("recipient", "b@example.org", "recipient_count", "1")}, false, 2},
		{"two sessions", []string{u("client_port", "1"), u("client_port", "2")}, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFake()
			g.overUsers["u"] = true
			addr := start(t, &Server{Guard: g}, "tcp")
			conns := []*client{dial(t, "tcp", addr), dial(t, "tcp", addr)}
			for i, r := range tt.reqs {
				c := conns[0]
				if tt.twoConns {
					c = conns[i%2]
				}
				if got := c.ask(r); got != DefaultDeferAction {
					t.Errorf("request %d: %q, want defer", i, got)
				}
			}
			if n := g.rcpts.Load(); n != tt.want {
				t.Errorf("Recipient called %d times, want %d", n, tt.want)
			}
		})
	}
}

func TestFoldExpires(t *testing.T) {
	f := newFold()
	t0 := time.Now()
	f.remember(1, "A", "a", t0)
	if _, _, ok := f.repeat(1, t0.Add(repeatWindow)); ok {
		t.Error("repeat after repeatWindow folded")
	}
	for i := range uint64(5000) {
		f.remember(i, "A", "a", t0.Add(time.Duration(i)*time.Millisecond))
	}
	f.repeat(0, t0.Add(6*time.Second))
	if len(f.seen) != 0 || len(f.order)-f.head != 0 {
		t.Errorf("after expiry: %d remembered, %d in order", len(f.seen), len(f.order)-f.head)
	}
}

func goroutines(t *testing.T, atMost int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= atMost {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, want at most %d:\n%s", n, atMost, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	g := newFake()
	inCall := make(chan struct{}, 1)
	g.hook = func(ctx context.Context) error {
		select {
		case inCall <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return ctx.Err()
	}
	s := &Server{Guard: g, Timeout: time.Hour, Log: quietLog()}
	var served sync.WaitGroup
	var addrs []string
	for _, network := range []string{"tcp", "unix"} {
		addr := "127.0.0.1:0"
		if network == "unix" {
			addr = "unix:" + filepath.Join(t.TempDir(), "p.sock")
		}
		l, err := listen.Listen(addr, DefaultSocketMode, "")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		served.Go(func() {
			if err := s.Serve(l); !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve = %v, want ErrServerClosed", err)
			}
		})
	}
	var conns []net.Conn
	for i, network := range []string{"tcp", "unix"} {
		for range 3 {
			c, err := net.Dial(network, addrs[i])
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
	}
	io.WriteString(conns[0], policyReq())      // a guard call in flight
	io.WriteString(conns[1], "request=smtpd_") // mid-request
	<-inCall
	done := make(chan error)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	served.Wait()
	for _, c := range conns {
		c.Close()
	}
	if err := s.Serve(nopListener{}); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close = %v, want ErrServerClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := os.Stat(strings.TrimPrefix(addrs[1], "unix:")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	goroutines(t, base)
}

type nopListener struct{ net.Listener }

func (nopListener) Close() error { return nil }

type recMetrics struct {
	mu sync.Mutex
	n  map[string]int
}

func (m *recMetrics) BadRequest(reason string) { m.Request("bad:"+reason, 0) }
func (m *recMetrics) StoreError()              { m.Request("store-error", 0) }

func (m *recMetrics) Request(verdict string, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n[verdict]++
}

func TestMetrics(t *testing.T) {
	m := &recMetrics{n: map[string]int{}}
	g := newFake()
	s := &Server{Guard: g, Metrics: m, MaxConns: 2, MaxLineLen: 512}
	addr := start(t, s, "tcp")
	c := dial(t, "tcp", addr)
	c.ask(policyReq())
	c.ask(policyReq("client_address", bannedAddr.String()))
	c.ask(policyReq("sasl_username", overUser))
	c.ask(policyReq("sasl_username", brokenUser))
	listed(t, s, 0, 1) // c waits for a request (it lists itself after its reply)
	for _, bad := range []string{"x\n\n", strings.Repeat("x", 600) + "\n\n", "a=1\n"} {
		b := dial(t, "tcp", addr)
		io.WriteString(b.c, bad)
		if strings.HasSuffix(bad, "\n") && !strings.HasSuffix(bad, "\n\n") {
			b.c.(*net.TCPConn).CloseWrite()
		}
		if err := b.closed(); err != nil {
			t.Errorf("after %q: %v", bad, err)
		}
	}
	d := dial(t, "tcp", addr) // second connection: at MaxConns
	d.ask(policyReq())
	// Both wait, c longest: unlisted, the third would close d instead, or
	// itself with both busy.
	listed(t, s, 0, 2)
	dial(t, "tcp", addr).ask(policyReq()) // third: closes c
	if err := c.closed(); err != nil {
		t.Errorf("longest-idle connection: %v", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	want := map[string]int{
		VerdictDunno: 3, VerdictReject: 1, VerdictDefer: 1, VerdictFailClosed: 1, "store-error": 1,
		"bad:" + ReasonMalformed: 1, "bad:" + ReasonLineTooLong: 1, "bad:" + ReasonTruncated: 1, "bad:" + ReasonTooManyConns: 1,
	}
	for k, v := range want {
		if m.n[k] != v {
			t.Errorf("metrics[%s] = %d, want %d (all: %v)", k, m.n[k], v, m.n)
		}
	}
}

// A peer that resets the connection between requests is not a bad request.
func TestResetIsNotBadRequest(t *testing.T) {
	m := &recMetrics{n: map[string]int{}}
	addr := start(t, &Server{Guard: newFake(), Metrics: m}, "tcp")
	c := dial(t, "tcp", addr)
	c.ask(policyReq())
	tc := c.c.(*net.TCPConn)
	tc.SetLinger(0) // close sends RST
	tc.Close()
	// Another connection still works, and by then the reset has been read.
	d := dial(t, "tcp", addr)
	d.ask(policyReq())
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		m.mu.Lock()
		bad := 0
		for k, v := range m.n {
			if strings.HasPrefix(k, "bad:") {
				bad += v
			}
		}
		m.mu.Unlock()
		if bad != 0 {
			t.Fatalf("a reset counted as a bad request: %v", m.n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
