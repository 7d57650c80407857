package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

const (
	apiCheckToken  = "e2e-check-token-0123456789"
	apiReportToken = "e2e-report-token-0123456789"
)

// apiDaemon is a daemon with the HTTP API on and the README's roundcube
// jail; it returns the daemon and the API's base URL.
func apiDaemon(t *testing.T, mode os.FileMode) (*Daemon, string) {
	t.Helper()
	toks := filepath.Join(t.TempDir(), "api-tokens")
	text := "# e2e\n" + apiCheckToken + " check nginx\n" + apiReportToken + " report roundcube\n"
	if err := os.WriteFile(toks, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(toks, mode)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	d := NewDaemon(t, "api.listen="+addr, "api.tokens_file="+toks,
		"jails.roundcube.enabled=true", "jails.roundcube.events=auth-failure", "jails.roundcube.apps=roundcube",
		"jails.roundcube.key=ip", "jails.roundcube.maxretry=3", "jails.roundcube.findtime=10m",
		"jails.roundcube.bantime=1h", "jails.roundcube.action=refuse")
	return d, "http://" + addr
}

func apiDo(t *testing.T, method, url, token, body string) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// The real daemon serves the API: reports from a web app ban through the
// roundcube jail and /v1/check refuses the banned browser; an address from
// which 5 users logged in (a webmail) is never banned by address, while
// the one user failing there is; `mailguard status` lists it.
func TestAPIDaemon(t *testing.T) {
	d, base := apiDaemon(t, 0o600)
	d.Start()
	check := func(q string) int { return apiDo(t, "GET", base+"/v1/check?"+q, apiCheckToken, "") }
	event := func(kind, ip, user string) {
		t.Helper()
		body := fmt.Sprintf(`{"kind":%q,"ip":%q,"user":%q,"app":"roundcube"}`, kind, ip, user)
		if got := apiDo(t, "POST", base+"/v1/events", apiReportToken, body); got != 200 {
			t.Fatalf("event %s = %d", body, got)
		}
	}
	if got := check("ip=198.51.100.9"); got != 204 {
		t.Fatalf("check = %d, want 204", got)
	}
	if got := apiDo(t, "GET", base+"/v1/check?ip=198.51.100.9", apiReportToken, ""); got != 403 {
		t.Errorf("check with a report token = %d, want 403", got)
	}
	for range 3 {
		event("auth-failure", "198.51.100.9", "bob@example.org")
	}
	if got := check("ip=198.51.100.9"); got != 403 {
		t.Errorf("check after 3 roundcube failures = %d, want 403", got)
	}

	web := "203.0.113.80"
	for i := range 5 {
		event("auth-success", web, fmt.Sprintf("user%d@example.org", i))
	}
	for range 20 { // dovecot (prefix, 5) would ban the address; dovecot-user (user, 20) bans mallory
		event("auth-failure", web, "mallory@example.org")
	}
	if got := check("ip=" + web); got != 204 {
		t.Errorf("shared address after 20 failures of one user: check = %d, want 204", got)
	}
	if got := check("ip=" + web + "&user=user1@example.org"); got != 204 {
		t.Errorf("another user at the shared address: check = %d, want 204", got)
	}
	if got := check("ip=" + web + "&user=mallory@example.org"); got != 403 {
		t.Errorf("the failing user at the shared address: check = %d, want 403", got)
	}
	out := d.MustCLI("status")
	if !strings.Contains(out, "Shared addresses (5+ users logged in within 24h0m0s") || !strings.Contains(out, web+"\t5 users") {
		t.Errorf("status does not list the shared address:\n%s", out)
	}
	if strings.Contains(d.MustCLI("status", "dovecot"), web) || !strings.Contains(d.Log(), "not banned: shared address") {
		t.Errorf("shared address banned, or not logged as spared:\n%s\n%s", out, d.Log())
	}
	d.Stop()
	for _, tok := range []string{apiCheckToken, apiReportToken} {
		if strings.Contains(d.Log(), tok) {
			t.Fatalf("the daemon logged a token")
		}
	}
}

// A tokens file other users may read stops the start with exit 2.
func TestAPITokensFileMode(t *testing.T) {
	d, _ := apiDaemon(t, 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := []string{"serve", "--config", d.Config}
	for _, s := range d.sets {
		args = append(args, "--set", s)
	}
	out, err := d.command(ctx, args...).CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "other users may read it") {
		t.Errorf("serve with a 0644 tokens file: exit %d, output:\n%s", code, out)
	}
}

// With real Dovecot: once two users (safety.shared_address.min_users=2 here)
// logged in from one address (a webmail without the browser's address),
// a guesser's failures there never ban that address, everyone else keeps
// logging in from it, the guesser's account is banned; an address without
// that history is banned as before.
func TestSharedAddressDovecot(t *testing.T) {
	d := NewDaemon(t, "dovecot.api_header="+testAPIKey, "jails.dovecot.maxretry=3", "jails.dovecot-user.maxretry=4",
		"safety.shared_address.min_users=2")
	d.Start()
	dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{})
	const webmail, attacker = "127.0.0.5", "127.0.0.6"
	for _, u := range testUsers {
		if r := imapLogin(t, dv.IMAP, webmail, u, testPassword); !strings.HasPrefix(r, "a1 OK") {
			t.Fatalf("%s from the webmail = %q", u, r)
		}
	}
	for i := range 5 {
		if r := imapLogin(t, dv.IMAP, webmail, "mallory@example.org", fmt.Sprintf("guess%d", i)); !strings.HasPrefix(r, "a1 NO") {
			t.Fatalf("guess %d from the webmail = %q, want NO", i, r)
		}
	}
	if r := imapLogin(t, dv.IMAP, webmail, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Errorf("%s from the webmail after 5 failures of another user = %q, want OK", testUser, r)
	}
	if r := imapLogin(t, dv.IMAP, webmail, "mallory@example.org", "guess9"); r != "a1 NO [ALERT] "+rejectUserMsg {
		t.Errorf("the guesser's account after 5 distinct guesses = %q, want the user ban", r)
	}
	for range 3 {
		imapLogin(t, dv.IMAP, attacker, testUser, "wrong")
	}
	if r := imapLogin(t, dv.IMAP, attacker, testUser, testPassword); r != "a1 NO [ALERT] "+rejectMsg {
		t.Errorf("an address with no users after 3 failures = %q, want refused", r)
	}
	if out := d.MustCLI("status"); !strings.Contains(out, webmail+"\t2 users") {
		t.Errorf("status does not list %s as shared:\n%s", webmail, out)
	}
	if out := d.MustCLI("status", "dovecot"); strings.Contains(out, webmail) || !strings.Contains(out, attacker) {
		t.Errorf("status dovecot: want %s banned and %s not:\n%s", attacker, webmail, out)
	}
}
