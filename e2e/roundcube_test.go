package e2e

import (
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
)

// Webmail logins through real Roundcube (contrib/roundcube's plugin and
// contrib/dovecot's login_trusted_networks line): wrong passwords posted
// to the login form from one browser address ban that address, not the
// webmail host Roundcube logs in from, while a browser elsewhere logs in.
func TestRoundcube(t *testing.T) {
	const attacker, other, webmailHost = "127.0.0.2", "127.0.0.3", "127.0.0.1"
	// 127.0.0.1, the webmail host, is not in ignoreip here: nothing but
	// the plugin keeps the failures off it.
	d := NewDaemon(t,
		"dovecot.api_header="+testAPIKey,
		"jails.dovecot.maxretry=3",
		"ignoreip=::1",
	)
	d.Start()
	dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{Webmail: true})
	w := StartWebmail(t, dv.IMAP, WebmailOptions{Plugins: []string{"mailguard_client_ip"}})

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
	failed(attacker, testUser, testPassword) // refused by mailguard: banned
	loggedIn(other)
	// Dovecot saw the browsers, never a login from the webmail host.
	b, err := os.ReadFile(dv.Log)
	if err != nil {
		t.Fatal(err)
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
