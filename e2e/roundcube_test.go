package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mailguard/mailguard/internal/testenv"
)

// Webmail logins through real Roundcube (contrib/roundcube's plugin,
// contrib/dovecot's webmail file, contrib/nginx's auth_request snippet):
// wrong passwords posted to the login form from one browser address ban
// that address, not the webmail host Roundcube logs in from, while a
// browser elsewhere logs in; then nginx refuses the banned browser with a
// 403 before PHP runs.
func TestRoundcube(t *testing.T) {
	const attacker, other, webmailHost = "127.0.0.2", "127.0.0.3", "127.0.0.1"
	tokens := filepath.Join(t.TempDir(), "api-tokens")
	if err := os.WriteFile(tokens, []byte(apiCheckToken+" check nginx\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	api := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	// 127.0.0.1, the webmail host, is not in ignoreip here: nothing but
	// the plugin keeps the failures off it.
	d := NewDaemon(t,
		"dovecot.api_header="+testAPIKey,
		"jails.dovecot.maxretry=3",
		"ignoreip=::1",
		"api.listen="+api, "api.tokens_file="+tokens,
	)
	d.Start()
	dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{Webmail: true})
	w := StartWebmail(t, dv.IMAP, WebmailOptions{
		Plugins: []string{"mailguard_client_ip"},
		Server: contribFile(t, "nginx/mailguard.conf",
			"http://127.0.0.1:10031/", "http://"+api+"/",
			`"Bearer REPLACE_WITH_A_CHECK_TOKEN"`, `"Bearer `+apiCheckToken+`"`),
	})

	// A login that Roundcube answers with its login page and "Login failed.".
	failed := func(src, user, pass string) {
		t.Helper()
		status, loc, body := w.NewBrowser(t, src).Login(t, user, pass)
		if status != http.StatusUnauthorized || loc != "" || !strings.Contains(body, "Login failed.") {
			t.Fatalf("login as %s from %s = %d %q, want 401 with \"Login failed.\":\n%s", user, src, status, loc, body)
		}
	}
	// A browser logs in and sees its mailbox.
	loggedIn := func(src string) {
		t.Helper()
		b := w.NewBrowser(t, src)
		if status, loc, _ := b.Login(t, testUser, testPassword); status != http.StatusFound || !strings.Contains(loc, "_task=mail") {
			t.Fatalf("login from %s = %d %q, want 302 to the mailbox", src, status, loc)
		}
		if status, body := b.Get(t, "?_task=mail"); status != http.StatusOK || !strings.Contains(body, `"task":"mail"`) || !strings.Contains(body, testUser) {
			t.Fatalf("mailbox after the login from %s = %d, want 200 with the user's mailbox:\n%s", src, status, body)
		}
	}
	loggedIn(other)
	// frank has never logged in to Roundcube: its own login_rate_limit
	// (per known user) does not stop the guessing before Dovecot.
	for range 3 {
		failed(attacker, "frank@example.org", "wrong")
	}
	status := d.MustCLI("status", "dovecot")
	if !strings.Contains(status, "Banned IP list:\t"+attacker+"\n") {
		t.Fatalf("status dovecot does not list %s alone as banned after 3 failures through Roundcube:\n%s", attacker, status)
	}
	if strings.Contains(status, webmailHost) {
		t.Fatalf("status dovecot lists the webmail host %s:\n%s", webmailHost, status)
	}

	// nginx asks mailguard (auth_request) first: the banned browser gets
	// the snippet's 403 page for the form and for a login post, and
	// nothing reaches Roundcube or Dovecot; the other browser logs in.
	refused := "Too many failed logins from your network"
	if status, body := w.NewBrowser(t, attacker).Get(t, ""); status != http.StatusForbidden || !strings.Contains(body, refused) {
		t.Fatalf("login form for banned %s = %d, want 403 with %q:\n%s", attacker, status, refused, body)
	}
	if status, loc, body := w.NewBrowser(t, attacker).Post(t, "?_task=login", "_task=login&_action=login&_user=alice&_pass=x"); status != http.StatusForbidden || loc != "" || !strings.Contains(body, refused) {
		t.Fatalf("login post from banned %s = %d %q, want 403 with %q:\n%s", attacker, status, loc, refused, body)
	}
	loggedIn(other)
	if got := apiDo(t, "GET", "http://"+api+"/v1/check?ip="+webmailHost, apiCheckToken, ""); got != http.StatusNoContent {
		t.Errorf("check ip=%s (the webmail host) = %d, want 204", webmailHost, got)
	}

	// Dovecot saw the browsers, never a login from the webmail host, and
	// nothing more from the banned browser once nginx refused it.
	b, err := os.ReadFile(dv.Log)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "rip="+attacker+","); n != 3 {
		t.Errorf("dovecot log: %d lines from %s, want the 3 failures before the ban", n, attacker)
	}
	for _, re := range []string{`auth failed.*user=<frank@example\.org>.*rip=127\.0\.0\.2,`, `Login: user=<alice@example\.org>.*rip=127\.0\.0\.3,`} {
		if !regexp.MustCompile(re).Match(b) {
			t.Errorf("dovecot log has no line matching %s", re)
		}
	}
	if m := regexp.MustCompile(`(auth failed|Login:).*rip=127\.0\.0\.1,.*`).Find(b); m != nil {
		t.Errorf("dovecot log has a login from the webmail host: %s", m)
	}
}
