package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, string(b)
}

func TestMetricsAndHealth(t *testing.T) {
	r := New(func(context.Context) (map[string]int, error) { return map[string]int{"dovecot": 2}, nil })
	pf := Frontend{R: r, Name: "postfix"}
	pf.Request("reject", 300*time.Microsecond)
	pf.BadRequest("malformed")
	pf.StoreError()
	r.Failure("dovecot", "imap")
	r.Banned("dovecot")
	r.FirewallError("sync")
	r.FirewallEntries(7)

	healthy := true
	s := &Server{Registry: r, Health: func(context.Context) error {
		if healthy {
			return nil
		}
		return errors.New("store: redis down")
	}}
	h := s.Handler()
	code, body := get(t, h, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`mailguard_requests_total{frontend="postfix",verdict="reject"} 1`,
		`mailguard_decision_seconds_count{frontend="postfix"} 1`,
		`mailguard_bad_requests_total{frontend="postfix",reason="malformed"} 1`,
		`mailguard_store_errors_total{frontend="postfix"} 1`,
		`mailguard_failures_total{jail="dovecot",protocol="imap"} 1`,
		`mailguard_bans_total{jail="dovecot"} 1`,
		`mailguard_bans_active{jail="dovecot"} 2`,
		`mailguard_firewall_errors_total{op="sync"} 1`,
		`mailguard_firewall_entries 7`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if code, body := get(t, h, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz healthy = %d %q", code, body)
	}
	healthy = false
	if code, body := get(t, h, "/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "degraded: store: redis down") {
		t.Errorf("/healthz degraded = %d %q", code, body)
	}
}

// TestPprof: the profiler is served only when Pprof is set.
func TestPprof(t *testing.T) {
	for _, on := range []bool{false, true} {
		h := (&Server{Registry: New(nil), Pprof: on}).Handler()
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/cmdline"} {
			code, _ := get(t, h, path)
			if want := map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[on]; code != want {
				t.Errorf("Pprof %v: GET %s = %d, want %d", on, path, code, want)
			}
		}
	}
}

// serveReal runs a Server on a loopback listener.
func serveReal(t *testing.T, s *Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// serverClosed reports whether the server closed c within 10s.
func serverClosed(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

// Idle keep-alive and silent connections, twice the cap of them, neither
// pile up nor lock out a scraper; idle and half-sent requests are closed.
func TestServeBoundsConnections(t *testing.T) {
	const maxConns = 4
	r := New(nil)
	s := &Server{Registry: r, MaxConns: maxConns, IdleTimeout: 300 * time.Millisecond, ReadHeaderTimeout: 300 * time.Millisecond}
	addr := serveReal(t, s)

	var flood []net.Conn
	for range 2 * maxConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		flood = append(flood, c)
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape during a flood of %d idle connections: %v", 2*maxConns, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `mailguard_bad_requests_total{frontend="metrics",reason="too-many-conns"}`) {
		t.Errorf("scrape = %d, without the evictions counted:\n%s", resp.StatusCode, b)
	}
	for i, c := range flood[:maxConns+1] {
		if !serverClosed(c) {
			t.Errorf("flood connection %d (of the oldest) not closed", i)
		}
	}

	// A kept-alive connection is closed after IdleTimeout, a request whose
	// headers never end after ReadHeaderTimeout.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	if !serverClosed(idle) {
		t.Errorf("idle keep-alive connection not closed")
	}
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	if !serverClosed(slow) {
		t.Errorf("a request with unfinished headers was not closed")
	}
}

func TestLogSourceMetrics(t *testing.T) {
	r := New(nil)
	r.LogLines("log:/var/log/mail.log").Inc()
	r.LogLines("log:/var/log/mail.log").Inc()
	r.LogMatches("log:/var/log/mail.log:postfix", "postfix").Inc()
	up := false
	r.LogSourceUp("log:/var/log/mail.log", func() bool { return up })
	s := &Server{Registry: r}
	for _, tc := range []struct {
		up   bool
		want []string
	}{
		{false, []string{
			`mailguard_log_lines_total{source="log:/var/log/mail.log"} 2`,
			`mailguard_log_matches_total{jail="postfix",source="log:/var/log/mail.log:postfix"} 1`,
			`mailguard_log_source_up{source="log:/var/log/mail.log"} 0`,
		}},
		{true, []string{`mailguard_log_source_up{source="log:/var/log/mail.log"} 1`}},
	} {
		up = tc.up
		_, body := get(t, s.Handler(), "/metrics")
		for _, w := range tc.want {
			if !strings.Contains(body, w+"\n") {
				t.Errorf("/metrics lacks %s", w)
			}
		}
	}
}
