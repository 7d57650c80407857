package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestBlastRadiusConfirm: a real daemon with safety.max_bans_per_minute 2
// and failures reported as Dovecot does: two bans are made, the others are
// held (status says so, /healthz is degraded, held clients are not
// refused), `mailguard confirm` applies one subject's, then --all the rest.
func TestBlastRadiusConfirm(t *testing.T) {
	d := NewDaemon(t, "safety.max_bans_per_minute=2", "jails.dovecot.maxretry=1")
	d.Start()
	c := &http.Client{Timeout: 10 * time.Second}
	post := func(command, remote string, extra map[string]any) map[string]any {
		t.Helper()
		m := map[string]any{"login": "x@example.org", "pwhash": "00", "remote": remote, "protocol": "imap", "session_id": "s" + remote}
		for k, v := range extra {
			m[k] = v
		}
		body, _ := json.Marshal(m)
		resp, err := dovecotPost(c, d.Dovecot, command, body)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("%s: %v", command, err)
		}
		return out
	}
	refused := func(remote string) bool {
		return post("allow", remote, nil)["status"].(float64) < 0
	}
	for i := 1; i <= 5; i++ {
		post("report", fmt.Sprintf("192.0.2.%d", i), map[string]any{"success": false, "policy_reject": false})
	}
	if !refused("192.0.2.1") || !refused("192.0.2.2") || refused("192.0.2.3") {
		t.Errorf("refused: .1 %v .2 %v .3 %v; want the first two only", refused("192.0.2.1"), refused("192.0.2.2"), refused("192.0.2.3"))
	}
	out := d.MustCLI("status")
	if !strings.Contains(out, "3 bans HELD BACK") || !strings.Contains(out, "192.0.2.5\tjail dovecot") {
		t.Errorf("status does not list the held bans:\n%s", out)
	}
	resp, err := c.Get("http://" + d.Metrics + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "3 bans held back") {
		t.Errorf("/healthz = %d %q; want 503 with 3 bans held back", resp.StatusCode, b)
	}
	if out := d.MustCLI("confirm", "192.0.2.4"); !strings.Contains(out, "banned 192.0.2.4 in jail dovecot") {
		t.Errorf("confirm 192.0.2.4 = %q", out)
	}
	if !refused("192.0.2.4") || refused("192.0.2.3") {
		t.Errorf("after confirming .4: .4 refused %v, .3 refused %v; want true, false", refused("192.0.2.4"), refused("192.0.2.3"))
	}
	if out, err := d.CLI("confirm"); err == nil || exitCode(err) != 2 {
		t.Errorf("confirm without an argument = %q, %v; want a usage error", out, err)
	}
	if out := d.MustCLI("confirm", "--all"); !strings.Contains(out, "confirmed 2 held bans") {
		t.Errorf("confirm --all = %q", out)
	}
	if !refused("192.0.2.3") || !refused("192.0.2.5") {
		t.Errorf("after confirm --all: .3 and .5 not refused")
	}
	var h struct {
		Held []any `json:"held"`
	}
	if err := json.Unmarshal([]byte(d.MustCLI("confirm", "--list", "--json")), &h); err != nil || len(h.Held) != 0 {
		t.Errorf("confirm --list --json: %v, %d held; want none", err, len(h.Held))
	}
}
