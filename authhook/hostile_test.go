package authhook

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/internal/listen"
	"github.com/mailguard/mailguard/internal/logtest"
)

// rawPost sends one Dovecot-shaped request on c and returns the response.
func rawPost(t *testing.T, c net.Conn, br *bufio.Reader, body string, hdr ...string) *http.Response {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "POST /?command=allow HTTP/1.1\r\nHost: policy\r\nContent-Type: application/json\r\nUser-Agent: dovecot/auth-policy-client\r\nContent-Length: %d\r\n", len(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	b.WriteString("\r\n" + body)
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// closedByServer reports whether the server closed c (EOF or reset).
func closedByServer(c net.Conn, br *bufio.Reader) error {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(br)
	if len(b) > 0 {
		return fmt.Errorf("got %q before the connection closed", b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("connection still open")
	}
	return nil
}

func startServer(t *testing.T, s *Server) string {
	t.Helper()
	l, err := listen.Listen("127.0.0.1:0", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(serve(t, s, l))
	return l.Addr().String()
}

// TestIdleConnsCannotLockOutDovecot: 2×MaxConns keep-alive connections
// that got a 401, and 2×MaxConns that sent nothing, do not keep Dovecot's
// requests from being answered, with the right verdicts.
func TestIdleConnsCannotLockOutDovecot(t *testing.T) {
	const maxConns = 16
	m := &fakeMetrics{}
	log, _ := testLogger(t)
	s := &Server{Guard: newFakeGuard("127.0.0.3"), APIHeader: "Authorization: Bearer KEY", MaxConns: maxConns,
		Metrics: m, Log: log}
	addr := startServer(t, s)
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for round := range 3 {
		for range 2 * maxConns {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
			br := bufio.NewReader(c)
			if resp := rawPost(t, c, br, reqBody("127.0.0.2", "alice", "x")); resp.StatusCode != 401 {
				t.Fatalf("without the API header: %d, want 401", resp.StatusCode)
			}
			if err := closedByServer(c, br); err != nil {
				t.Fatalf("connection after a 401: %v, want closed", err)
			}
		}
		for range 2 * maxConns {
			c, err := net.Dial("tcp", addr) // nothing sent
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		// Dovecot: a new keep-alive connection, its requests answered (the
		// client's deadline, 5 s, is above Dovecot's own 2 s).
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		br := bufio.NewReader(c)
		for i, tc := range []struct{ remote, want string }{
			{"127.0.0.3", `{"status":-1,"msg":"` + DefaultRejectMsg + `"}`},
			{"127.0.0.2", `{"status":0,"msg":""}`},
			{"127.0.0.3", `{"status":-1,"msg":"` + DefaultRejectMsg + `"}`},
		} {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			body := reqBody(tc.remote, "alice", fmt.Sprint(round, i))
			fmt.Fprintf(c, "POST /?command=allow HTTP/1.1\r\nHost: policy\r\nAuthorization: Bearer KEY\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("round %d, request %d: %v", round, i, err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || strings.TrimSpace(string(got)) != tc.want {
				t.Errorf("round %d, %s: %d %s, want 200 %s", round, tc.remote, resp.StatusCode, got, tc.want)
			}
		}
	}
	if n := strings.Count(m.all(), "bad "+ReasonTooManyConns); n < 3*2*maxConns-maxConns {
		t.Errorf("%d connections closed over MaxConns, want at least %d", n, 3*2*maxConns-maxConns)
	}
}

// TestMaxConnsClosesLongestIdleDovecot: at MaxConns the connection that
// has waited longest is closed, one that never sent a request first.
func TestMaxConnsClosesLongestIdleDovecot(t *testing.T) {
	log, _ := testLogger(t)
	s := &Server{Guard: newFakeGuard(), MaxConns: 2, Log: log}
	addr := startServer(t, s)
	dialOK := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		br := bufio.NewReader(c)
		if resp := rawPost(t, c, br, reqBody("192.0.2.1", "a", "s")); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		return c, br
	}
	idleWait := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for s.conns.idleLen() != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d idle connections, want %d", s.conns.idleLen(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	a, abr := dialOK()
	idleWait(1)
	b, bbr := dialOK()
	idleWait(2)
	silent, err := net.Dial("tcp", addr) // closes a
	if err != nil {
		t.Fatal(err)
	}
	sbr := bufio.NewReader(silent)
	if err := closedByServer(a, abr); err != nil {
		t.Errorf("longest-idle connection: %v, want closed", err)
	}
	dialOK() // closes silent, not b
	if err := closedByServer(silent, sbr); err != nil {
		t.Errorf("silent connection: %v, want closed", err)
	}
	if resp := rawPost(t, b, bbr, reqBody("192.0.2.1", "a", "t")); resp.StatusCode != 200 {
		t.Errorf("b: status %d", resp.StatusCode)
	}
}

func TestBadRequestClosesConnection(t *testing.T) {
	log, _ := testLogger(t)
	addr := startServer(t, &Server{Guard: newFakeGuard(), Log: log})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if resp := rawPost(t, c, br, `{"login":"a"}`); resp.StatusCode != 400 {
		t.Fatalf("no remote: %d, want 400", resp.StatusCode)
	}
	if err := closedByServer(c, br); err != nil {
		t.Errorf("after a 400: %v", err)
	}
}

// TestShutdownFinishesRequests: Shutdown lets a request in the guard answer,
// closes idle connections, and returns once every guard call has.
func TestShutdownFinishesRequests(t *testing.T) {
	release := make(chan struct{})
	g := &slowGuard{fakeGuard: newFakeGuard(), in: make(chan struct{}, 1), release: release}
	log, _ := testLogger(t)
	s := &Server{Guard: g, Timeout: time.Minute, Log: log}
	l, err := listen.Listen("127.0.0.1:0", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	addr := l.Addr().String()

	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	ibr := bufio.NewReader(idle)
	rawPost(t, idle, ibr, reqBody("192.0.2.1", "a", "s"))
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	busy, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	g.block.Store(true)
	answered := make(chan *http.Response, 1)
	go func() {
		bbr := bufio.NewReader(busy)
		body := reqBody("192.0.2.9", "a", "u")
		fmt.Fprintf(busy, "POST /?command=allow HTTP/1.1\r\nHost: p\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		resp, err := http.ReadResponse(bbr, nil)
		if err != nil {
			answered <- nil
			return
		}
		answered <- resp
	}()
	<-g.in

	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	if err := closedByServer(idle, ibr); err != nil {
		t.Errorf("idle connection during Shutdown: %v", err)
	}
	if err := closedByServer(silent, bufio.NewReader(silent)); err != nil {
		t.Errorf("silent connection during Shutdown: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(release)
	if resp := <-answered; resp == nil || resp.StatusCode != 200 {
		t.Errorf("request in flight during Shutdown: %v, want 200", resp)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

// TestCloseJoinsGuardCalls: a guard call that ignores its context outlives
// its request (answered at Timeout), and Close waits for it.
func TestCloseJoinsGuardCalls(t *testing.T) {
	release := make(chan struct{})
	g := &slowGuard{fakeGuard: newFakeGuard(), in: make(chan struct{}, 1), release: release, ignoreCtx: true}
	g.block.Store(true)
	s := &Server{Guard: g, Timeout: 20 * time.Millisecond, FailOpen: true, Log: discardLogger()}
	if _, body := post(s, "allow", reqBody("192.0.2.1", "a", "s")); body != `{"status":0,"msg":""}` {
		t.Fatalf("allow with a stuck guard: %s", body)
	}
	<-g.in
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a guard call was running")
	case <-time.After(50 * time.Millisecond): // the call is stuck: Close must still wait
	}
	close(release)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return after the guard call did")
	}
}

// slowGuard blocks Check, while block is set, until release is closed (or,
// unless ignoreCtx, ctx is done).
type slowGuard struct {
	*fakeGuard
	block     atomic.Bool
	ignoreCtx bool
	in        chan struct{}
	release   chan struct{}
}

func (g *slowGuard) Check(ctx context.Context, a netip.Addr, user string) (CheckResult, error) {
	if g.block.Load() {
		g.in <- struct{}{}
		if g.ignoreCtx {
			<-g.release
		} else {
			select {
			case <-g.release:
			case <-ctx.Done():
				return CheckResult{}, ctx.Err()
			}
		}
	}
	return g.fakeGuard.Check(ctx, a, user)
}

// TestLogRateLimits: 401s, store errors and refusals make one line per
// cause (refusals: per banned subject) per period, and the next line counts
// those held back.
func TestLogRateLimits(t *testing.T) {
	lc := logtest.New()
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", lc.String())
		}
	})
	newServer := func(g Guard) *Server {
		return &Server{Guard: g, APIHeader: "Authorization: Bearer KEY", Log: slog.New(lc), now: clk.Now,
			FailOpen: true, Timeout: time.Second}
	}
	key := []string{"Authorization", "Bearer KEY"}

	s401 := newServer(newFakeGuard())
	for i := range 1000 {
		if code, _ := post(s401, "allow", reqBody("192.0.2.1", "a", fmt.Sprint(i))); code != 401 {
			t.Fatalf("without the key: %d", code)
		}
	}
	if n, _ := lc.Count("auth policy request without the right API header"); n != 1 {
		t.Errorf("1000 requests without the API header: %d lines, want 1", n)
	}

	// Refusals: the fake guard names the /128 it refuses; a guard that names
	// one /64 for many addresses is what guard does with prefix bans.
	pg := &prefixGuard{}
	s := newServer(pg)
	for i := range 1000 {
		post(s, "allow", reqBody(fmt.Sprintf("2001:db8:66:1::%x", i+1), "a", fmt.Sprint(i)), key...)
	}
	post(s, "allow", reqBody("192.0.2.66", "a", "x"), key...)
	if n, _ := lc.Count("refused"); n != 2 {
		t.Errorf("1001 refusals of 2 banned subjects: %d lines, want 2", n)
	}

	s = newServer(errGuard{})
	for i := range 100 {
		post(s, "allow", reqBody("192.0.2.1", "a", fmt.Sprint(i)), key...)
		post(s, "report", reqBody("192.0.2.1", "a", fmt.Sprint(i), "success", false), key...)
		post(s, "report", reqBody("192.0.2.1", "a", fmt.Sprint(i), "success", true), key...)
	}
	for _, msg := range []string{"guard check failed, allowing (fail open)", "guard: recording a failure", "guard: recording a success"} {
		if n, _ := lc.Count(msg); n != 1 {
			t.Errorf("100 store errors: %q %d times, want 1", msg, n)
		}
	}

	clk.Add(time.Minute)
	post(s, "allow", reqBody("192.0.2.1", "a", "late"), key...)
	if n, sup := lc.Count("guard check failed, allowing (fail open)"); n != 2 || sup[1] != 99 {
		t.Errorf("store error after the period: %d lines, suppressed %v; want 2, the second with 99", n, sup)
	}
	post(s401, "allow", reqBody("192.0.2.1", "a", "late"))
	if n, sup := lc.Count("auth policy request without the right API header"); n != 2 || sup[1] != 999 {
		t.Errorf("401 after the period: %d lines, suppressed %v; want 2, the second with 999", n, sup)
	}
}

// prefixGuard refuses 2001:db8:66:1::/64 as one subject and 192.0.2.66.
type prefixGuard struct{ benchGuard }

func (prefixGuard) Check(_ context.Context, a netip.Addr, _ string) (CheckResult, error) {
	if p := netip.MustParsePrefix("2001:db8:66:1::/64"); p.Contains(a) {
		return CheckResult{Refused: true, Banned: "net:" + p.String()}, nil
	}
	if a.String() == "192.0.2.66" {
		return CheckResult{Refused: true, Banned: "net:192.0.2.66/32"}, nil
	}
	return CheckResult{}, nil
}
