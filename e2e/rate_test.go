package e2e

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"
)

// authSession opens an SMTP session to addr from src, says EHLO, upgrades
// with STARTTLS (the submission service wants it before AUTH), logs in as
// testUser and starts a message.
func authSession(t *testing.T, addr, src string) *SMTP {
	t.Helper()
	s := DialSMTP(t, addr, src)
	s.Cmd(t, "EHLO client.example.net")
	s.StartTLS(t)
	if r := s.Cmd(t, "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+testUser+"\x00"+testPassword))); !strings.HasPrefix(r, "235") {
		t.Fatalf("AUTH from %s = %q, want 235", src, r)
	}
	if r := s.Cmd(t, "MAIL FROM:<"+testUser+">"); !strings.HasPrefix(r, "250") {
		t.Fatalf("MAIL FROM from %s = %q, want 250", src, r)
	}
	return s
}

// The postfix-rate jail through a real Postfix (stock Debian plus contrib,
// the submission service): an authenticated sender gets 250 for maxretry
// recipients, then 450 4.7.1 from Postfix, from another address too; once
// findtime has passed, 250 again.
func TestPostfixRateLimit(t *testing.T) {
	const findtime = 3 * time.Second
	d := NewDaemon(t, "dovecot.api_header="+testAPIKey,
		"jails.postfix-rate.maxretry=3", "jails.postfix-rate.findtime="+findtime.String())
	d.Start()
	StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{SASLSocket: PostfixSASLSocket(t)})
	pf := StartPostfix(t, d.Postfix)

	const src = "127.0.0.7"
	s := authSession(t, pf.Submission, src)
	var over time.Time
	for i := 1; i <= 5; i++ {
		r := s.Cmd(t, fmt.Sprintf("RCPT TO:<r%d@example.org>", i))
		want := "250"
		if i > 3 {
			want = "450 4.7.1"
		}
		if !strings.HasPrefix(r, want) {
			t.Fatalf("recipient %d of an authenticated sender (maxretry 3) = %q, want %s", i, r, want)
		}
		over = time.Now()
	}
	// The jail counts per user: the same user from another address is over.
	s2 := authSession(t, pf.Submission, "127.0.0.8")
	if r := s2.Cmd(t, "RCPT TO:<other@example.org>"); !strings.HasPrefix(r, "450 4.7.1") {
		t.Fatalf("the same user from another address = %q, want 450 4.7.1 (key user)", r)
	}
	s2.Cmd(t, "QUIT")
	if out := d.MustCLI("status", "postfix-rate"); !strings.Contains(out, "Currently banned:\t0") {
		t.Errorf("a rate limit banned:\n%s", out)
	}

	// Every recipient counted, the deferred ones too: wait until the last
	// one has left the window. Real time: the daemon's clock is the real one.
	time.Sleep(time.Until(over.Add(findtime + 500*time.Millisecond)))
	if r := s.Cmd(t, "RCPT TO:<r6@example.org>"); !strings.HasPrefix(r, "250") {
		t.Fatalf("recipient after findtime = %q, want 250", r)
	}
	s.Cmd(t, "QUIT")
}

// A check_policy_service in smtpd_data_restrictions (protocol_state=DATA)
// refuses a banned client and a banned user at DATA, and counts no
// recipients there. The policy is asked at DATA only: main.cf's smtp
// service, with AUTH switched on and the policy moved out of
// smtpd_recipient_restrictions.
func TestPostfixDataStage(t *testing.T) {
	// A login makes its network a known device, which user bans spare:
	// let that last a second only.
	const knownTTL = time.Second
	d := NewDaemon(t, "dovecot.api_header="+testAPIKey,
		"jails.postfix-rate.maxretry=2", "known_device_ttl="+knownTTL.String())
	d.Start()
	StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{SASLSocket: PostfixSASLSocket(t)})
	pf := StartPostfix(t, d.Postfix, PostfixOptions{Set: []string{
		"smtpd_sasl_auth_enable=yes",
		"smtpd_recipient_restrictions=permit_sasl_authenticated, reject_unauth_destination",
		"smtpd_data_restrictions=check_policy_service { inet:" + d.Postfix + ", timeout=5s, default_action=DUNNO }",
	}})

	// More messages than postfix-rate's maxretry, each with one recipient:
	// DATA is not a recipient, nothing is deferred.
	for i := 1; i <= 4; i++ {
		s := authSession(t, pf.Addr, "127.0.0.9")
		if r := s.Cmd(t, fmt.Sprintf("RCPT TO:<d%d@example.org>", i)); !strings.HasPrefix(r, "250") {
			t.Fatalf("message %d: RCPT = %q, want 250", i, r)
		}
		if r := s.Cmd(t, "DATA"); !strings.HasPrefix(r, "354") {
			t.Fatalf("message %d: DATA = %q, want 354 (a DATA-stage request is not a recipient)", i, r)
		}
		// Hang up without sending the message: nothing is queued.
	}

	// A client banned while its session is open is refused at DATA.
	s := authSession(t, pf.Addr, "127.0.0.10")
	if r := s.Cmd(t, "RCPT TO:<x@example.org>"); !strings.HasPrefix(r, "250") {
		t.Fatalf("RCPT = %q, want 250", r)
	}
	d.MustCLI("ban", "127.0.0.10")
	if r := s.Cmd(t, "DATA"); !strings.HasPrefix(r, "421 4.7.1") {
		t.Fatalf("DATA from a banned client = %q, want 421 4.7.1", r)
	}

	// A user banned while logged in is refused at DATA once the login's
	// network is no longer a known device: sasl_username reaches the
	// policy there.
	s = authSession(t, pf.Addr, "127.0.0.11")
	if r := s.Cmd(t, "RCPT TO:<y@example.org>"); !strings.HasPrefix(r, "250") {
		t.Fatalf("RCPT = %q, want 250", r)
	}
	d.MustCLI("ban", testUser)
	if r := s.Cmd(t, "NOOP"); !strings.HasPrefix(r, "250") {
		t.Fatalf("NOOP = %q", r)
	}
	time.Sleep(knownTTL + 200*time.Millisecond)
	if r := s.Cmd(t, "DATA"); !strings.HasPrefix(r, "421 4.7.1") {
		t.Fatalf("DATA from a banned user = %q, want 421 4.7.1", r)
	}
}
