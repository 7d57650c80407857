package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mailguard/mailguard/authhook"
	"github.com/mailguard/mailguard/internal/listen"
)

// jailGuard refuses an address from its 5th failure, like the dovecot jail.
type jailGuard struct {
	mu       sync.Mutex
	failures map[netip.Addr]int
}

func (g *jailGuard) Check(_ context.Context, a netip.Addr, _ string) (authhook.CheckResult, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failures[a] >= 5 {
		return authhook.CheckResult{Refused: true, Banned: "net:" + a.String() + "/32"}, nil
	}
	return authhook.CheckResult{Failures: g.failures[a]}, nil
}

func (g *jailGuard) Fail(_ context.Context, a netip.Addr, _, _, _ string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failures[a]++
	return nil
}

func (g *jailGuard) Succeed(context.Context, netip.Addr, string) error { return nil }

func newAuthhook() *authhook.Server {
	return &authhook.Server{
		Guard: &jailGuard{failures: map[netip.Addr]int{}}, APIHeader: "Authorization: Bearer KEY",
		Tarpit: authhook.DefaultTarpit, Log: slog.New(slog.DiscardHandler),
	}
}

// recording wraps h, keeping every request's command, headers and body, and
// counting the connections opened.
type recording struct {
	h     http.Handler
	mu    sync.Mutex
	reqs  []seenRequest
	conns atomic.Int64
}

type seenRequest struct {
	cmd    string
	header http.Header
	body   map[string]any
}

func (rec *recording) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	var body map[string]any
	json.Unmarshal(b, &body)
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, seenRequest{r.URL.Query().Get("command"), r.Header.Clone(), body})
	rec.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(b))
	rec.h.ServeHTTP(w, r)
}

// counts reads the numbers of the "answers" line.
func counts(t *testing.T, out string) map[string]int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^answers +(.*)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no answers line:\n%s", out)
	}
	got := map[string]int{}
	for _, f := range strings.Split(m[1], ", ") {
		k, v, _ := strings.Cut(f, " ")
		got[k], _ = strconv.Atoi(v)
	}
	return got
}

func TestDovecotRun(t *testing.T) {
	rec := &recording{h: newAuthhook()}
	ts := httptest.NewUnstartedServer(rec)
	ts.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			rec.conns.Add(1)
		}
	}
	ts.Start()
	defer ts.Close()

	var out, errOut bytes.Buffer
	args := []string{"-dovecot", ts.URL + "/", "-api-header", "Authorization: Bearer KEY",
		"-conns", "4", "-requests", "1000", "-clients", "32", "-users", "10"}
	if code := run(context.Background(), args, &out, &errOut); code != 0 {
		t.Fatalf("run = %d, stderr: %s", code, errOut.String())
	}
	for _, want := range []string{"1000 answered", "0 errors", "req/s", "p99", "dovecot auth policy",
		"20% failed reports from 2 of 32 clients, 10 logins; "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if n := checkConnsOpened(t, out.String(), 4); rec.conns.Load() != int64(n) {
		t.Errorf("server saw %d connections, the tool says it opened %d", rec.conns.Load(), n)
	}
	got := counts(t, out.String())
	// 4 workers of 2-request attempts, 40% of them failing: 200 reports, give
	// or take the attempts cut by -requests.
	if r := got["report"]; r < 190 || r > 210 {
		t.Errorf("report = %d, want about 200:\n%s", r, out.String())
	}
	// Two attackers with 5 failures each before the guard refuses them.
	if got["refuse"] < 150 || got["tarpit"] == 0 || got["allow"] < 550 {
		t.Errorf("verdicts %v, want refusals from the 2 attackers, some tarpit, the rest allowed", got)
	}
	if sum := got["allow"] + got["tarpit"] + got["refuse"] + got["report"]; sum != 1000 {
		t.Errorf("verdicts %v add up to %d, want 1000", got, sum)
	}

	// Requests look like the ones Dovecot 2.3 sent: same keys, same JSON types.
	want := map[string]map[string]string{} // command -> key -> JSON type
	raw, err := os.ReadFile("../../authhook/testdata/dovecot-2.3-imap-requests.json")
	if err != nil {
		t.Fatal(err)
	}
	var fixtures []struct {
		Path string
		Body map[string]any
	}
	if err := json.Unmarshal(raw, &fixtures); err != nil {
		t.Fatal(err)
	}
	for _, f := range fixtures {
		want[strings.TrimPrefix(f.Path, "/?command=")] = types(f.Body)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	seen := map[string]int{}
	for _, r := range rec.reqs {
		seen[r.cmd]++
		if got := types(r.body); !maps.Equal(got, want[r.cmd]) {
			t.Fatalf("%s body has keys %v, Dovecot sends %v", r.cmd, got, want[r.cmd])
		}
		for k, v := range map[string]string{"Content-Type": "application/json", "User-Agent": "dovecot/auth-policy-client", "Authorization": "Bearer KEY"} {
			if got := r.header.Get(k); got != v {
				t.Fatalf("%s: header %s = %q, want %q", r.cmd, k, got, v)
			}
		}
		if p, _ := r.body["protocol"].(string); p != "imap" && p != "smtp" {
			t.Fatalf("protocol %q", p)
		}
	}
	if seen["allow"] != 1000-got["report"] || seen["report"] != got["report"] {
		t.Errorf("server saw %v, load tool counted %v", seen, got)
	}
}

// types maps each key of a JSON object to the type of its value.
func types(m map[string]any) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprintf("%T", v)
	}
	return out
}

func TestDovecotUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "auth.sock")
	l, err := listen.Listen("unix:"+path, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	s := newAuthhook()
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })

	var out, errOut bytes.Buffer
	args := []string{"-dovecot", "unix:" + path, "-api-header", "Authorization: Bearer KEY", "-conns", "2", "-requests", "200", "-fail-ratio", "0"}
	if code := run(context.Background(), args, &out, &errOut); code != 0 {
		t.Fatalf("run = %d, stderr: %s", code, errOut.String())
	}
	if got := counts(t, out.String()); !maps.Equal(got, map[string]int{"allow": 200}) {
		t.Errorf("with -fail-ratio 0, answers %v, want allow 200:\n%s", got, out.String())
	}

	// A wrong key is the server's 401, reported as errors.
	out.Reset()
	errOut.Reset()
	args = []string{"-dovecot", "unix:" + path, "-api-header", "Authorization: Bearer WRONG", "-conns", "1", "-requests", "3"}
	if code := run(context.Background(), args, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "401") {
		t.Errorf("wrong api header: run = %d, stderr %q, want 1 and a 401", code, errOut.String())
	}
}

func TestDovecotRefusesOtherTargets(t *testing.T) {
	for _, args := range [][]string{
		{"-dovecot", "http://192.0.2.1:10029/"},
		{"-dovecot", "http://mail.example.com:10029/"},
		{"-dovecot", "https://127.0.0.1:10029/"},
		{"-dovecot", "http://127.0.0.1:10029/?command=allow"},
		{"-dovecot", "http://user@127.0.0.1:10029/"},
		{"-dovecot", "127.0.0.1:10029"},
		{"-dovecot", "unix:"},
		{"-dovecot", "http://127.0.0.1:10029/", "-policy", "127.0.0.1:10028"},
		{"-dovecot", "http://127.0.0.1:10029/", "-fail-ratio", "0.6"},
		{"-dovecot", "http://127.0.0.1:10029/", "-users", "0"},
		{"-dovecot", "http://127.0.0.1:10029/", "-api-header", "X-Api-Key: a\r\nHost: b"},
		{"-api-header", "Authorization: Bearer KEY"},
		{"-fail-ratio", "0.1"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("run(%q) = %d, want 2; stderr %q", args, code, errOut.String())
		}
	}
	for _, ok := range []string{"http://127.0.0.1:1/", "http://[::1]:1", "http://localhost:1/policy", "unix:/run/x.sock"} {
		if _, _, _, err := parseDovecotURL(context.Background(), ok); err != nil {
			t.Errorf("parseDovecotURL(%q) = %v", ok, err)
		}
	}
}

func TestAPIHeaderLine(t *testing.T) {
	for _, tt := range []struct{ in, name, value string }{
		{"Authorization: Bearer KEY", "Authorization", "Bearer KEY"},
		{" x-token :  v:w ", "X-Token", "v:w"},
		{"bare-secret", "X-Api-Key", "bare-secret"},
		{"", "", ""},
	} {
		name, value := apiHeaderLine(tt.in)
		if name != tt.name || value != tt.value {
			t.Errorf("apiHeaderLine(%q) = %q, %q, want %q, %q", tt.in, name, value, tt.name, tt.value)
		}
	}
}

// checkConnsOpened checks the "N connections opened" the tool prints: one
// keep-alive connection per worker, and net/http may redial one that broke
// on a loaded machine, never many (1000 requests would be 1000 without
// keep-alive). It returns N.
func checkConnsOpened(t *testing.T, out string, workers int) int {
	t.Helper()
	m := regexp.MustCompile(`(\d+) connections opened`).FindStringSubmatch(out)
	if m == nil {
		t.Errorf("output lacks the connections opened:\n%s", out)
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	if n < workers || n > 2*workers {
		t.Errorf("%d connections opened, want %d to %d (one per worker):\n%s", n, workers, 2*workers, out)
	}
	return n
}
