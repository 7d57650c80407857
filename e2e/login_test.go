package e2e

import (
	"strings"
	"testing"
)

const rejectMsg = "Too many failed logins, e2e"

func loginDaemon(t *testing.T) *Daemon {
	d := NewDaemon(t,
		"dovecot.api_header="+testAPIKey,
		"dovecot.reject_msg="+rejectMsg,
		"dovecot.tarpit.start=50",
		"jails.dovecot.maxretry=3",
		"jails.dovecot-user.maxretry=4",
	)
	d.Start()
	return d
}

// Wrong IMAP passwords from one address until maxretry; then even the right
// password is refused there, while another address logs in; a user ban
// spares the user's known device; unban lets the first address in again.
func TestDovecotIMAP(t *testing.T) {
	d := loginDaemon(t)
	dv := StartDovecot(t, "http://"+d.Dovecot+"/")
	const attacker, other, home = "127.0.0.2", "127.0.0.3", "127.0.0.4"

	if r := imapLogin(t, dv.IMAP, home, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Fatalf("login from %s (becomes a known device) = %q", home, r)
	}
	for i := 1; i <= 3; i++ {
		r := imapLogin(t, dv.IMAP, attacker, testUser, "wrong")
		if !strings.HasPrefix(r, "a1 NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("wrong password %d from %s = %q, want NO [AUTHENTICATIONFAILED]", i, attacker, r)
		}
		if r := imapLogin(t, dv.IMAP, other, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
			t.Fatalf("login from %s during the attack = %q, want OK", other, r)
		}
	}
	want := "a1 NO [ALERT] " + rejectMsg
	if r := imapLogin(t, dv.IMAP, attacker, testUser, testPassword); r != want {
		t.Fatalf("right password from banned %s = %q, want %q", attacker, r, want)
	}
	if out := d.MustCLI("status", "dovecot"); !strings.Contains(out, attacker) || !strings.Contains(out, "By protocol:\timap 3 ") {
		t.Fatalf("status dovecot does not list %s or 3 imap failures:\n%s", attacker, out)
	}
	d.MustCLI("unban", attacker)
	if r := imapLogin(t, dv.IMAP, attacker, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Fatalf("after unban, login from %s = %q, want OK", attacker, r)
	}

	// Distinct wrong passwords for one user from rotating addresses ban the
	// user (dovecot-user, maxretry 4), but not on the user's known device.
	for i, src := range []string{"127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"} {
		r := imapLogin(t, dv.IMAP, src, testUser, "guess"+string(rune('a'+i)))
		if !strings.HasPrefix(r, "a1 NO") {
			t.Fatalf("guess %d = %q", i, r)
		}
	}
	if r := imapLogin(t, dv.IMAP, "127.0.0.20", testUser, testPassword); r != want {
		t.Fatalf("banned user from a new address = %q, want %q", r, want)
	}
	if r := imapLogin(t, dv.IMAP, home, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Fatalf("banned user from the known device %s = %q, want OK (no lock-out by proxy)", home, r)
	}
	if out := d.MustCLI("status", "dovecot-user"); !strings.Contains(out, testUser) {
		t.Fatalf("status dovecot-user does not list the user:\n%s", out)
	}
}

// SMTP AUTH through Postfix with Dovecot SASL is counted by the same jails
// and refused with 535 5.7.8 and the reject message.
func TestPostfixSASLViaDovecot(t *testing.T) {
	d := loginDaemon(t)
	dv := StartDovecot(t, "http://"+d.Dovecot+"/")
	pf := StartPostfix(t, d.Postfix, "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = "+dv.AuthSocket+"\nsmtpd_tls_security_level = none\n")
	const attacker = "127.0.0.5"
	for i := 1; i <= 3; i++ {
		if r := smtpAuthPlain(t, pf.Addr, attacker, testUser, "wrong"); !strings.HasPrefix(r, "535 5.7.8") {
			t.Fatalf("wrong AUTH %d = %q, want 535 5.7.8", i, r)
		}
	}
	r := smtpAuthPlain(t, pf.Addr, attacker, testUser, testPassword)
	if !strings.HasPrefix(r, "535 5.7.8") || !strings.Contains(r, rejectMsg) {
		t.Fatalf("AUTH from banned %s = %q, want 535 5.7.8 ... %s", attacker, r, rejectMsg)
	}
	if r := smtpAuthPlain(t, pf.Addr, "127.0.0.6", testUser, testPassword); !strings.HasPrefix(r, "235") {
		t.Fatalf("AUTH from another address = %q, want 235", r)
	}
	if out := d.MustCLI("status", "dovecot"); !strings.Contains(out, "By protocol:\tsmtp 3 ") {
		t.Errorf("status dovecot does not show 3 smtp failures:\n%s", out)
	}
	// Postfix also refuses the banned client at RCPT through the policy service.
	if r, closed := rcpt(t, pf.Addr, attacker); !strings.HasPrefix(r, "421 4.7.1") || !closed {
		t.Fatalf("RCPT from banned %s = %q closed=%v, want 421 and disconnect", attacker, r, closed)
	}
}

// `mailguard simulate` against the real servers: three wrong logins, then
// mailguard refuses, and the tool says at which attempt.
func TestSimulate(t *testing.T) {
	d := loginDaemon(t)
	dv := StartDovecot(t, "http://"+d.Dovecot+"/")
	pf := StartPostfix(t, d.Postfix, "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = "+dv.AuthSocket+"\nsmtpd_tls_security_level = none\n")
	for _, tc := range []struct{ proto, target, src, user, refusal string }{
		{"imap", dv.IMAP, "127.0.0.40", "bob@example.org", "NO [ALERT] " + rejectMsg},
		{"pop3", dv.POP3, "127.0.0.41", "carol@example.org", rejectMsg},
		{"smtp", pf.Addr, "127.0.0.42", "dave@example.org", "535 5.7.8"},
	} {
		out := d.MustCLI("simulate", "--target", tc.target, "--protocol", tc.proto, "--user", tc.user,
			"--attempts", "5", "--source", tc.src, "--reject-msg", rejectMsg)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 7 {
			t.Fatalf("simulate %s: %d lines, want a header, 5 attempts and a verdict:\n%s", tc.proto, len(lines), out)
		}
		for i, l := range lines[1:6] {
			want := "failed"
			if i >= 3 {
				want = "refused by policy"
			}
			if !strings.Contains(l, want) {
				t.Errorf("simulate %s attempt %d: %q, want %q", tc.proto, i+1, l, want)
			}
			if i >= 3 && !strings.Contains(l, tc.refusal) {
				t.Errorf("simulate %s attempt %d: %q does not show the server's refusal %q", tc.proto, i+1, l, tc.refusal)
			}
		}
		if want := "mailguard started refusing at attempt 4"; lines[6] != want {
			t.Errorf("simulate %s: last line %q, want %q", tc.proto, lines[6], want)
		}
	}
	// simulate refuses anything but an address the admin typed.
	if out, err := d.CLI("simulate", "--target", "localhost:143", "--user", "x"); err == nil {
		t.Errorf("simulate against a host name ran:\n%s", out)
	}
}
