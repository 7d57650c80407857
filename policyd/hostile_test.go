package policyd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/internal/logtest"
)

// TestIdleConnsCannotLockOutPostfix: 2×MaxConns connections that send
// nothing, and MaxConns that sent one request and then idle, do not keep
// Postfix's requests from being answered, with the right verdicts.
func TestIdleConnsCannotLockOutPostfix(t *testing.T) {
	const maxConns = 16
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			m := &recMetrics{n: map[string]int{}}
			addr := start(t, &Server{Guard: newFake(), MaxConns: maxConns, Metrics: m}, network)
			for range maxConns {
				dial(t, network, addr).ask(policyReq()) // served once, then idle
			}
			for round := range 3 {
				for range 2 * maxConns {
					dial(t, network, addr) // connected, nothing sent
				}
				// Postfix: a new connection per round, and its requests
				// answered (the client's deadline, 5 s, is contrib's
				// check_policy_service timeout).
				c := dial(t, network, addr)
				for i, tc := range []struct{ ip, want string }{
					{bannedAddr.String(), DefaultRejectAction},
					{"198.51.100.7", "DUNNO"},
					{"2001:db8:66:1::9", DefaultRejectAction},
				} {
					if got := c.ask(policyReq("client_address", tc.ip, "recipient_count", fmt.Sprint(round, i))); got != tc.want {
						t.Errorf("round %d, %s: %q, want %q", round, tc.ip, got, tc.want)
					}
				}
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			if n := m.n["bad:"+ReasonTooManyConns]; n < 3*2*maxConns {
				t.Errorf("%d connections closed over MaxConns, want at least %d", n, 3*2*maxConns)
			}
		})
	}
}

func TestFirstRequestTimeout(t *testing.T) {
	m := &recMetrics{n: map[string]int{}}
	addr := start(t, &Server{Guard: newFake(), FirstTimeout: 50 * time.Millisecond, Metrics: m}, "tcp")
	served := dial(t, "tcp", addr)
	served.ask(policyReq())
	silent := dial(t, "tcp", addr)
	if err := silent.closed(); err != nil {
		t.Errorf("connection that sent nothing: %v", err)
	}
	// The deadline is for the first request only: the served connection,
	// older than the silent one, outlives it (idle timeout 6 minutes).
	if got := served.ask(policyReq()); got != "DUNNO" {
		t.Errorf("served connection after the first-request timeout: %q", got)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := m.n["bad:"+ReasonNoRequest]; n != 1 {
		t.Errorf("no-request count %d, want 1", n)
	}
}

// TestShutdown: idle connections close at once, a request in the guard is
// answered, then its connection closes, and Serve returns.
func TestShutdown(t *testing.T) {
	g := newFake()
	inCall, release := make(chan struct{}, 1), make(chan struct{})
	var block atomic.Bool
	g.hook = func(context.Context) error {
		if block.Load() {
			inCall <- struct{}{}
			<-release
		}
		return nil
	}
	s := &Server{Guard: g, Timeout: time.Minute}
	addr := start(t, s, "tcp")
	idle := dial(t, "tcp", addr)
	idle.ask(policyReq())
	silent := dial(t, "tcp", addr)
	busy := dial(t, "tcp", addr)
	block.Store(true)
	io.WriteString(busy.c, policyReq("client_address", bannedAddr.String()))
	<-inCall

	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	for name, c := range map[string]*client{"idle": idle, "silent": silent} {
		if err := c.closed(); err != nil {
			t.Errorf("%s connection during Shutdown: %v", name, err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	default:
	}
	close(release)
	busy.c.SetDeadline(time.Now().Add(5 * time.Second))
	if got, err := ReadReply(busy.br, Limits{}); got != DefaultRejectAction {
		t.Errorf("request in flight during Shutdown: %q, %v; want it answered", got, err)
	}
	if err := busy.closed(); err != nil {
		t.Errorf("connection after its answer: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Shutdown = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// TestShutdownDeadline: a request stuck past Shutdown's context is cut off
// by Close, and Shutdown says so.
func TestShutdownDeadline(t *testing.T) {
	g := newFake()
	inCall := make(chan struct{}, 1)
	g.hook = func(ctx context.Context) error {
		inCall <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	s := &Server{Guard: g, Timeout: time.Hour}
	addr := start(t, s, "tcp")
	c := dial(t, "tcp", addr)
	io.WriteString(c.c, policyReq())
	<-inCall
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown with a stuck request = %v, want context.Canceled", err)
	}
	if err := c.closed(); err != nil {
		t.Errorf("stuck connection after Shutdown: %v", err)
	}
}

// TestLogRateLimits: what a client can make policyd log is one line per
// cause per period, refusals one per banned subject, with the count of lines
// held back on the next one.
func TestLogRateLimits(t *testing.T) {
	lc := logtest.New()
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	g := newFake()
	var down bool
	var mu sync.Mutex
	g.hook = func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return errors.New("store: connection refused")
		}
		return nil
	}
	s := &Server{Guard: g, Log: slog.New(lc), now: clk.Now, MaxConns: 4}
	addr := start(t, s, "tcp")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", lc.String())
		}
	})

	// 1000 requests from 1000 addresses of one banned /64: one line.
	c := dial(t, "tcp", addr)
	for i := range 1000 {
		b := bannedNet.Addr().As16()
		b[14], b[15] = byte(i>>8), byte(i)
		if got := c.ask(policyReq("client_address", netip.AddrFrom16(b).String())); got != DefaultRejectAction {
			t.Fatalf("request %d: %q", i, got)
		}
	}
	// Another banned subject has its own line.
	c.ask(policyReq("client_address", bannedAddr.String()))
	if n, _ := lc.Count("policyd: refuse"); n != 2 {
		t.Errorf("refusal lines for 1001 refused requests of 2 banned subjects: %d, want 2", n)
	}

	// 50 malformed requests, each on its own connection: one line.
	for range 50 {
		b := dial(t, "tcp", addr)
		io.WriteString(b.c, "junk\n\n")
		b.closed()
	}
	// 50 guard errors: one line.
	mu.Lock()
	down = true
	mu.Unlock()
	for i := range 50 {
		c.ask(policyReq("recipient_count", fmt.Sprint(i)))
	}
	mu.Lock()
	down = false
	mu.Unlock()
	// 20 connections over MaxConns 4: one line.
	for range 20 {
		dial(t, "tcp", addr).ask(policyReq())
	}
	for _, msg := range []string{
		"policyd: bad request, connection closed",
		"policyd: guard unavailable, failing closed",
		"policyd: too many connections: closed the longest-idle one",
	} {
		if n, _ := lc.Count(msg); n != 1 {
			t.Errorf("%q logged %d times, want 1", msg, n)
		}
	}

	// After the period, the next line counts the lines held back.
	clk.Add(time.Minute)
	mu.Lock()
	down = true
	mu.Unlock()
	c = dial(t, "tcp", addr)
	c.ask(policyReq("recipient_count", "after"))
	if n, sup := lc.Count("policyd: guard unavailable, failing closed"); n != 2 || sup[1] != 49 {
		t.Errorf("guard errors after the period: %d lines, suppressed %v; want 2 lines, the second with 49", n, sup)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	c.ask(policyReq("client_address", "2001:db8:66:1::1"))
	if n, sup := lc.Count("policyd: refuse"); n != 3 || sup[2] != 999 {
		t.Errorf("refusals after the period: %d lines, suppressed %v; want 3 lines, the third with 999", n, sup)
	}
	if strings.Contains(lc.String(), "198.51.100") {
		t.Errorf("a request that was not refused was logged at info")
	}
}
