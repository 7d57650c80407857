package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// allowStatus posts a before-auth allow with the header line h and returns
// the HTTP status.
func allowStatus(t *testing.T, addr, h string) int {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"login": "u@example.org", "remote": "192.0.2.1", "protocol": "imap", "session_id": "k1"})
	resp, err := dovecotPostHeader(&http.Client{Timeout: 10 * time.Second}, addr, "allow", h, body)
	if err != nil {
		t.Fatalf("allow to %s: %v", addr, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// Without dovecot.api_header the daemon makes a key in state_dir on its
// first start and wants it from Dovecot; a real Dovecot given that key is
// guarded; the key survives restarts and is never logged.
func TestDovecotKeyByDefault(t *testing.T) {
	d := NewDaemon(t, "dovecot.api_header=")
	d.Start()
	path := filepath.Join(d.Dir, "dovecot-api.key")
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %s: %v (mode %v), want mode 0600", path, err, fi)
	}
	h := d.DovecotHeader()
	key := strings.TrimPrefix(h, "Authorization: Bearer ")
	for _, tc := range []struct {
		name, header string
		want         int
	}{
		{"no header", "", http.StatusUnauthorized},
		{"wrong key", "Authorization: Bearer " + strings.Repeat("0", len(key)), http.StatusUnauthorized},
		{"the harness's fixed key", testAPIKey, http.StatusUnauthorized},
		{"the key from state_dir", h, http.StatusOK},
	} {
		if got := allowStatus(t, d.Dovecot, tc.header); got != tc.want {
			t.Errorf("allow with %s = %d, want %d", tc.name, got, tc.want)
		}
	}
	if !strings.Contains(d.Log(), "made a new Dovecot API key") {
		t.Errorf("first start does not say it made a key:\n%s", d.Log())
	}
	d.Stop()
	if strings.Contains(d.Log(), key) {
		t.Fatalf("the daemon logged the key")
	}

	d.Start()
	if got := d.DovecotHeader(); got != h {
		t.Fatalf("after a restart the key changed")
	}
	if allowStatus(t, d.Dovecot, h) != http.StatusOK || allowStatus(t, d.Dovecot, "") != http.StatusUnauthorized {
		t.Fatalf("after a restart the key is not the one wanted")
	}
	if strings.Contains(d.Log(), "made a new Dovecot API key") || !strings.Contains(d.Log(), "dovecot requests must carry Authorization: Bearer <the key in the file>") {
		t.Errorf("the restart made a new key:\n%s", d.Log())
	}

	// A real Dovecot with the key: its failed logins are counted.
	dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{APIHeader: h})
	if r := imapLogin(t, dv.IMAP, "127.0.0.2", testUser, "wrong"); !strings.HasPrefix(r, "a1 NO") {
		t.Fatalf("wrong password = %q", r)
	}
	if out := d.MustCLI("status", "dovecot"); !strings.Contains(out, "Total failed:\t1\n") {
		t.Errorf("a failed login through Dovecot with the generated key was not counted:\n%s", out)
	}
	if strings.Contains(d.Log(), key) {
		t.Errorf("the daemon logged the key")
	}
}

// dovecot.insecure_no_auth runs without a key and warns at every start;
// with dovecot.api_header set as well it is a configuration error.
func TestDovecotInsecureNoAuth(t *testing.T) {
	d := NewDaemon(t, "dovecot.api_header=", "dovecot.insecure_no_auth=true")
	d.Start()
	if got := allowStatus(t, d.Dovecot, ""); got != http.StatusOK {
		t.Errorf("allow without a header under insecure_no_auth = %d, want 200", got)
	}
	if _, err := os.Stat(filepath.Join(d.Dir, "dovecot-api.key")); err == nil {
		t.Errorf("insecure_no_auth made a key file")
	}
	for i := range 2 {
		if !strings.Contains(d.Log(), "level=WARN msg=\"dovecot.insecure_no_auth is true") {
			t.Errorf("start %d under insecure_no_auth did not warn:\n%s", i+1, d.Log())
		}
		d.Stop()
		if i == 0 {
			d.Start()
		}
	}

	out, err := d.command(t.Context(), "check-config", "--config", d.Config, "--set", "dovecot.insecure_no_auth=true").CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "dovecot.insecure_no_auth: true contradicts dovecot.api_header") {
		t.Errorf("insecure_no_auth with api_header: exit %d, %q; want exit 2 naming the key", code, out)
	}
}
