package main

import (
	"context"
	"io"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/metrics"
	"github.com/mailguard/mailguard/store/memstore"
)

// /healthz says degraded, with the counts, while the blast-radius guard
// holds bans back, and ok again once they are confirmed; /metrics has
// mailguard_bans_held.
func TestHealthzHeld(t *testing.T) {
	ctx := context.Background()
	st, err := memstore.Open(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := metrics.New(nil)
	jail := guard.Jail{Name: "dovecot", Events: []string{guard.EventAuthFailure}, Key: guard.KeyIP, MaxRetry: 1,
		FindTime: time.Minute, BanTime: time.Hour, Action: guard.ActionRefuse}
	g, err := guard.New(st, guard.Config{Jails: []guard.Jail{jail}, MaxBansPerMinute: 1, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	reg.WatchHeld(func(ctx context.Context) (int, error) {
		s, err := g.Holding(ctx)
		return len(s.Held), err
	})
	h := (&metrics.Server{Registry: reg, Health: heldHealth(nil, g)}).Handler()
	get := func(path string) (int, string) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		b, _ := io.ReadAll(w.Result().Body)
		return w.Code, string(b)
	}
	for _, a := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		if _, err := g.Fail(ctx, netip.MustParseAddr(a), "", "imap", ""); err != nil {
			t.Fatal(err)
		}
	}
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "degraded: blast-radius guard: 2 bans held back (2 bans in the last minute, limit 1)") {
		t.Errorf("/healthz = %d %q; want 503 degraded with the counts", code, body)
	}
	_, m := get("/metrics")
	for _, want := range []string{"mailguard_bans_held 2", `mailguard_bans_held_total{jail="dovecot"} 2`, `mailguard_bans_released_total{how="confirmed"} 0`} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if _, err := g.Confirm(ctx, ""); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/healthz"); code != 200 {
		t.Errorf("/healthz after confirm = %d %q; want 200", code, body)
	}
	if _, m = get("/metrics"); !strings.Contains(m, "mailguard_bans_held 0") || !strings.Contains(m, `mailguard_bans_released_total{how="confirmed"} 2`) {
		t.Errorf("/metrics after confirm lacks mailguard_bans_held 0 / released 2")
	}
}
