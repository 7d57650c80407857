package metrics

import (
	"context"
	"errors"
	"io"
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
