package authhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeGuard counts failures per address, refuses the addresses in refused
// (and the users in userBanned, as a user ban does), and records its calls.
type fakeGuard struct {
	mu           sync.Mutex
	refused      map[netip.Addr]bool
	failures     map[netip.Addr]int
	userBanned   map[string]bool
	userFailures map[string]int
	calls        []string
}

func newFakeGuard(refused ...string) *fakeGuard {
	g := &fakeGuard{refused: map[netip.Addr]bool{}, failures: map[netip.Addr]int{},
		userBanned: map[string]bool{}, userFailures: map[string]int{}}
	for _, a := range refused {
		g.refused[netip.MustParseAddr(a)] = true
	}
	return g
}

func (g *fakeGuard) Check(_ context.Context, a netip.Addr, user string) (CheckResult, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, fmt.Sprintf("check %s %s", a, user))
	if g.refused[a] {
		return CheckResult{Refused: true, Banned: "net:" + netip.PrefixFrom(a, a.BitLen()).String()}, nil
	}
	if g.userBanned[user] {
		return CheckResult{Refused: true, Banned: "user:" + user, ByUser: true}, nil
	}
	return CheckResult{Failures: g.failures[a], UserFailures: g.userFailures[user]}, nil
}

func (g *fakeGuard) Fail(_ context.Context, a netip.Addr, user, protocol, pwhash string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, fmt.Sprintf("fail %s %s %s %s", a, user, protocol, pwhash))
	g.failures[a]++
	return nil
}

func (g *fakeGuard) Succeed(_ context.Context, a netip.Addr, user string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, fmt.Sprintf("succeed %s %s", a, user))
	delete(g.failures, a)
	return nil
}

func (g *fakeGuard) setFailures(a string, n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failures[netip.MustParseAddr(a)] = n
}

func (g *fakeGuard) setRefused(a string, refused bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refused[netip.MustParseAddr(a)] = refused
}

// takeCalls returns and forgets the calls made so far.
func (g *fakeGuard) takeCalls() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := g.calls
	g.calls = nil
	return c
}

// benchGuard answers at once, without state.
type benchGuard struct{}

func (benchGuard) Check(context.Context, netip.Addr, string) (CheckResult, error) {
	return CheckResult{Failures: 2}, nil
}
func (benchGuard) Fail(context.Context, netip.Addr, string, string, string) error {
	return nil
}
func (benchGuard) Succeed(context.Context, netip.Addr, string) error { return nil }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// errGuard fails every call.
type errGuard struct{}

func (errGuard) Check(context.Context, netip.Addr, string) (CheckResult, error) {
	return CheckResult{}, fmt.Errorf("store: %w", context.DeadlineExceeded)
}
func (errGuard) Fail(context.Context, netip.Addr, string, string, string) error {
	return fmt.Errorf("store: down")
}
func (errGuard) Succeed(context.Context, netip.Addr, string) error { return fmt.Errorf("store: down") }

// blockGuard blocks until ctx is done or, with ignoreCtx, until release is closed.
type blockGuard struct {
	ignoreCtx bool
	release   chan struct{}
}

func (g blockGuard) wait(ctx context.Context) error {
	if g.ignoreCtx {
		<-g.release
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}
func (g blockGuard) Check(ctx context.Context, _ netip.Addr, _ string) (CheckResult, error) {
	return CheckResult{}, g.wait(ctx)
}
func (g blockGuard) Fail(ctx context.Context, _ netip.Addr, _, _, _ string) error {
	return g.wait(ctx)
}
func (g blockGuard) Succeed(ctx context.Context, _ netip.Addr, _ string) error { return g.wait(ctx) }

// panicGuard panics.
type panicGuard struct{ errGuard }

func (panicGuard) Check(context.Context, netip.Addr, string) (CheckResult, error) {
	panic("boom")
}

// fakeMetrics records outcomes.
type fakeMetrics struct {
	mu   sync.Mutex
	seen []string
}

func (m *fakeMetrics) add(s string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seen = append(m.seen, s)
}

func (m *fakeMetrics) Request(verdict string, _ time.Duration) { m.add(verdict) }
func (m *fakeMetrics) BadRequest(reason string)                { m.add("bad " + reason) }
func (m *fakeMetrics) StoreError()                             { m.add("store-error") }

func (m *fakeMetrics) all() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strings.Join(m.seen, ", ")
}

func (m *fakeMetrics) last() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.seen) == 0 {
		return ""
	}
	return m.seen[len(m.seen)-1]
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func testLogger(t testing.TB) (*slog.Logger, *syncBuffer) {
	var buf syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

// post sends one request to h and returns the status code and the body.
func post(h http.Handler, command, body string, hdr ...string) (int, string) {
	r := httptest.NewRequest(http.MethodPost, "/?command="+command, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, strings.TrimSpace(w.Body.String())
}

// reqBody builds a Dovecot 2.3 body (sorted keys, string values).
func reqBody(remote, login, session string, extra ...any) string {
	m := map[string]any{
		"device_id": "", "login": login, "protocol": "imap", "pwhash": "0abc",
		"remote": remote, "session_id": session, "tls": false,
	}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i].(string)] = extra[i+1]
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func decodeReply(t *testing.T, body string) Reply {
	t.Helper()
	var r Reply
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("reply %q: %v", body, err)
	}
	return r
}
