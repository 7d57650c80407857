package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
	"github.com/mailguard/mailguard/totp"
)

const totpURL = "https://mail.example.org/totp"

// totpCode is the current code of an otpauth:// URL, as the user's app shows it.
func totpCode(t *testing.T, otpauth string) string {
	t.Helper()
	c, err := totp.Code(otpauth, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTOTP: with the real Dovecot (contrib) and Postfix SASL, a user who
// enrolled is refused over IMAP and SMTP AUTH from a new network after a
// right password, with the message naming the approval page, while a wrong
// password learns nothing about TOTP; the refusals are pending logins and
// count as no failure; `totp trust` lets the same logins in, `totp untrust`
// refuses them again; a code is accepted once; a user without TOTP is never
// affected.
func TestTOTP(t *testing.T) {
	d := NewDaemon(t, "dovecot.api_header="+testAPIKey, "jails.dovecot.maxretry=3",
		"totp.enabled=true", "totp.url="+totpURL, fmt.Sprintf("totp.listen=127.0.0.1:%d", testenv.FreePort(t)))
	d.Start()
	dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{SASLSocket: PostfixSASLSocket(t)})
	pf := StartPostfix(t, d.Postfix)
	const other = "frank@example.org" // same password, no TOTP
	const imapSrc, imapSrc2, smtpSrc = "127.0.1.2", "127.0.1.77", "127.0.2.2"

	out := d.MustCLI("totp", "enroll", testUser)
	otpauth := regexp.MustCompile(`otpauth://\S+`).FindString(out)
	if otpauth == "" || !strings.Contains(out, "█") {
		t.Fatalf("totp enroll printed no otpauth URL or QR code:\n%s", out)
	}
	if strings.Contains(d.Log(), "secret=") {
		t.Fatalf("the daemon logged the secret:\n%s", d.Log())
	}
	want := "New device: approve it with your authenticator code at " + totpURL + " then log in again."

	// A user without TOTP: never affected.
	if r := imapLogin(t, dv.IMAP, imapSrc, other, testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Fatalf("IMAP login of %s (no TOTP) = %q, want OK", other, r)
	}
	if r, _ := smtpAuth(t, pf, smtpSrc, other, testPassword); !strings.HasPrefix(r, "235") {
		t.Fatalf("SMTP AUTH of %s (no TOTP) = %q, want 235", other, r)
	}

	// The enrolled user: a wrong password is an ordinary failure...
	if r := imapLogin(t, dv.IMAP, imapSrc, testUser, "wrong"); !strings.HasPrefix(r, "a1 NO [AUTHENTICATIONFAILED]") {
		t.Fatalf("wrong password of the TOTP user = %q, want the ordinary failure", r)
	}
	// ...the right one is refused with the page's URL, over IMAP and SMTP.
	if r := imapLogin(t, dv.IMAP, imapSrc, testUser, testPassword); r != "a1 NO [ALERT] "+want {
		t.Fatalf("IMAP login of the TOTP user from a new network = %q, want NO [ALERT] %s", r, want)
	}
	if r, _ := smtpAuth(t, pf, smtpSrc, testUser, testPassword); !strings.HasPrefix(r, "535 5.7.8") || !strings.Contains(r, totpURL) {
		t.Fatalf("SMTP AUTH of the TOTP user from a new network = %q, want 535 5.7.8 naming %s", r, totpURL)
	}
	pending := d.MustCLI("totp", "pending", testUser)
	if !strings.Contains(pending, "imap from "+imapSrc+" (127.0.1.0/24)") || !strings.Contains(pending, "smtp from "+smtpSrc+" (127.0.2.0/24)") {
		t.Fatalf("totp pending does not list both refused logins:\n%s", pending)
	}

	// A code is accepted once.
	code := totpCode(t, otpauth)
	if out, err := d.CLI("totp", "check", testUser, code); err != nil {
		t.Fatalf("totp check with the current code: %v\n%s", err, out)
	}
	if out, err := d.CLI("totp", "check", testUser, code); exitCode(err) != 1 || !strings.Contains(out, "already used") {
		t.Fatalf("totp check with the same code again: exit %d, %q; want 1, already used", exitCode(err), out)
	}

	// Approved: the same logins (and the rest of the /24) get in.
	d.MustCLI("totp", "trust", testUser, imapSrc)
	for _, src := range []string{imapSrc, imapSrc2} {
		if r := imapLogin(t, dv.IMAP, src, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
			t.Fatalf("IMAP login from %s after totp trust = %q, want OK", src, r)
		}
	}
	if r, _ := smtpAuth(t, pf, smtpSrc, testUser, testPassword); !strings.HasPrefix(r, "535 5.7.8") {
		t.Fatalf("SMTP AUTH from the unapproved %s = %q, want still refused", smtpSrc, r)
	}
	d.MustCLI("totp", "trust", testUser, "127.0.2.0/24")
	if r, _ := smtpAuth(t, pf, smtpSrc, testUser, testPassword); !strings.HasPrefix(r, "235") {
		t.Fatalf("SMTP AUTH after totp trust = %q, want 235", r)
	}
	if st := d.MustCLI("status"); !strings.Contains(st, "TOTP: 1 user(s) enrolled, 2 approved device(s) active") {
		t.Errorf("status does not count the enrolment and approvals:\n%s", st)
	}

	// Untrusted: refused again.
	d.MustCLI("totp", "untrust", testUser, imapSrc)
	if r := imapLogin(t, dv.IMAP, imapSrc2, testUser, testPassword); r != "a1 NO [ALERT] "+want {
		t.Fatalf("IMAP login after totp untrust = %q, want refused", r)
	}
	// Four refusals from 127.0.1.0/24 (and one wrong password) with
	// jails.dovecot.maxretry 3: refusals are no failures, nothing is banned.
	if st := d.MustCLI("status", "dovecot"); strings.Contains(st, "127.0.1.") {
		t.Errorf("a TOTP refusal was counted as a failed login:\n%s", st)
	}
	for i := 0; i < 2; i++ {
		if r := imapLogin(t, dv.IMAP, imapSrc, other, testPassword); !strings.HasPrefix(r, "a1 OK") {
			t.Fatalf("IMAP login of %s (no TOTP) at the end = %q, want OK", other, r)
		}
	}
	d.MustCLI("totp", "disable", testUser)
	if r := imapLogin(t, dv.IMAP, imapSrc, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Fatalf("IMAP login after totp disable = %q, want OK", r)
	}
	t.Logf("pending logins listed:\n%s", pending)
}

// afterAuth sends Dovecot's two allows of a login whose password was right
// (same body, one session) to d and returns the second answer.
func afterAuth(t *testing.T, d *Daemon, remote, login string) (int, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"device_id": "", "login": login, "protocol": "imap", "pwhash": "03a1",
		"remote": remote, "session_id": fmt.Sprintf("s%d", time.Now().UnixNano()),
	})
	var r struct {
		Status int    `json:"status"`
		Msg    string `json:"msg"`
	}
	for i := 0; i < 2; i++ {
		resp, err := dovecotPost(http.DefaultClient, d.Dovecot, "allow", body)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 && r.Status != 0 {
			t.Fatalf("before-auth allow of %s from %s = %+v, want 0", login, remote, r)
		}
	}
	return r.Status, r.Msg
}

// TestTOTPRedisTwoNodes: two nodes on one Redis (and one key file) see an
// enrolment, a pending login, a used code and an approval made on the
// other at once.
func TestTOTPRedisTwoNodes(t *testing.T) {
	srv := redistest.StartServer(t, redistest.Config{})
	key := filepath.Join(t.TempDir(), "totp.key")
	sets := redisSets(srv.Addr(), redisPrefix(), "store.timeout=2s", "totp.enabled=true", "totp.url="+totpURL, "totp.key_file="+key)
	a := NewDaemon(t, append(sets, fmt.Sprintf("totp.listen=127.0.0.1:%d", testenv.FreePort(t)))...)
	a.Start()
	b := NewDaemon(t, append(sets, fmt.Sprintf("totp.listen=127.0.0.1:%d", testenv.FreePort(t)))...)
	b.Start()
	const phone = "192.0.2.50"

	if st, _ := afterAuth(t, b, phone, testUser); st != 0 {
		t.Fatalf("before enrolment: after-auth on b = %d, want 0", st)
	}
	otpauth := regexp.MustCompile(`otpauth://\S+`).FindString(a.MustCLI("totp", "enroll", testUser))
	if st, msg := afterAuth(t, b, phone, testUser); st != -1 || !strings.Contains(msg, totpURL) {
		t.Fatalf("enrolled on a: after-auth on b = %d %q, want -1 naming %s", st, msg, totpURL)
	}
	if p := a.MustCLI("totp", "pending", testUser); !strings.Contains(p, "imap from "+phone) {
		t.Fatalf("pending login refused by b not listed on a:\n%s", p)
	}
	code := totpCode(t, otpauth)
	a.MustCLI("totp", "check", testUser, code)
	if out, err := b.CLI("totp", "check", testUser, code); exitCode(err) != 1 || !strings.Contains(out, "already used") {
		t.Fatalf("code used on a, checked on b: exit %d %q, want 1, already used", exitCode(err), out)
	}
	b.MustCLI("totp", "trust", testUser, phone)
	if st, msg := afterAuth(t, a, phone, testUser); st != 0 {
		t.Fatalf("approved on b: after-auth on a = %d %q, want 0", st, msg)
	}
	a.MustCLI("totp", "untrust", testUser)
	if st, _ := afterAuth(t, b, phone, testUser); st != -1 {
		t.Fatalf("untrusted on a: after-auth on b = %d, want -1", st)
	}
	if st, _ := afterAuth(t, b, phone, "frank@example.org"); st != 0 {
		t.Fatalf("user without TOTP on b = %d, want 0", st)
	}
}
