package metrics

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// With the store down, mailguard_bans_active cannot be read; /metrics still
// serves every other metric (the store error counters above all), without
// that one.
func TestMetricsWithStoreDown(t *testing.T) {
	r := New(func(context.Context) (map[string]int, error) {
		return nil, errors.New("redisstore: bans: connection refused")
	})
	Frontend{R: r, Name: "postfix"}.StoreError()
	code, body := get(t, (&Server{Registry: r}).Handler(), "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics with the store down = %d, want 200:\n%s", code, body)
	}
	if want := `mailguard_store_errors_total{frontend="postfix"} 1`; !strings.Contains(body, want) {
		t.Errorf("/metrics with the store down lacks %s:\n%s", want, body)
	}
	if strings.Contains(body, "mailguard_bans_active{") {
		t.Errorf("/metrics with the store down has a mailguard_bans_active sample")
	}
}
