package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testcert"
	"github.com/mailguard/mailguard/internal/testenv"
)

// Dovecot is a private Dovecot instance: Debian's /etc/dovecot as installed
// by the packages, copied into a temp dir, plus contrib/dovecot verbatim
// (REPLACE_ placeholders filled in, the policy port and the SASL socket path
// changed), plus a local.conf (Debian's dovecot.conf includes it last) with
// only what a private instance needs: its directories, loopback ports and a
// passwd-file with the test users. Nothing a real install has on is switched
// off: plaintext logins are refused (ssl = yes with Debian's snakeoil
// certificate), auth_failure_delay is 2s, and Dovecot's auth penalty is
// whatever contrib says.
type Dovecot struct {
	IMAP, IMAPS, POP3, POP3S string
	Log                      string
	conf                     string
}

// DovecotOptions change the instance.
type DovecotOptions struct {
	// SASLSocket installs contrib/dovecot/95-postfix-sasl.conf with its
	// listener at this path (Postfix's <queue_directory>/private/auth).
	SASLSocket string
	// SSLRequired sets ssl = required with a self-signed certificate made
	// by the test, instead of Debian's ssl = yes with its snakeoil one.
	SSLRequired bool
	// At runs Dovecot inside a network namespace, listening on its address.
	At place
	// APIHeader is the "Authorization: Bearer KEY" line Dovecot sends;
	// empty: testAPIKey.
	APIHeader string
	// Webmail installs contrib/dovecot/96-mailguard-webmail.conf as
	// shipped (login_trusted_networks: loopback): Dovecot then takes the
	// client address from the IMAP ID of a webmail on this host
	// (contrib/roundcube/mailguard_client_ip).
	Webmail bool
}

const (
	testUser     = "alice@example.org"
	testPassword = "correct horse"
	testAPIKey   = "Authorization: Bearer e2e-secret"
)

// testUsers have testPassword; simulate's users are unknown to Dovecot
// (a failure as good as a wrong password).
var testUsers = []string{testUser, "frank@example.org"}

// StartDovecot runs Dovecot with its auth policy pointed at policyURL
// ("http://127.0.0.1:PORT/").
func StartDovecot(t *testing.T, policyURL string, opt DovecotOptions) *Dovecot {
	t.Helper()
	testenv.Root(t)
	bin := testenv.Command(t, "dovecot")
	doveadm := testenv.Command(t, "doveadm")
	if _, err := os.Stat("/etc/dovecot/dovecot.conf"); err != nil {
		testenv.Missing(t, "dovecot is installed without /etc/dovecot/dovecot.conf")
	}
	dir, err := os.MkdirTemp("/tmp", "mgdovecot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	etc := filepath.Join(dir, "etc")
	if out, err := exec.Command("cp", "-a", "/etc/dovecot", etc).CombinedOutput(); err != nil {
		t.Fatalf("copying /etc/dovecot: %v\n%s", err, out)
	}
	at := opt.At
	addr := func() string { return net.JoinHostPort(at.listen(), strconv.Itoa(testenv.FreePort(t))) }
	d := &Dovecot{
		IMAP: addr(), IMAPS: addr(),
		POP3: addr(), POP3S: addr(),
		Log: filepath.Join(dir, "dovecot.log"), conf: filepath.Join(etc, "dovecot.conf"),
	}

	// Test users instead of the system's (PAM): the one passdb change.
	editFile(t, filepath.Join(etc, "conf.d", "10-auth.conf"), "\n!include auth-system.conf.ext", "\n#!include auth-system.conf.ext")
	hash, err := exec.Command(doveadm, "pw", "-s", "SHA512-CRYPT", "-p", testPassword).Output()
	if err != nil {
		t.Fatalf("doveadm pw: %v", err)
	}
	var passwd strings.Builder
	for _, u := range testUsers {
		fmt.Fprintf(&passwd, "%s:%s::::::\n", u, strings.TrimSpace(string(hash)))
	}
	writeFile(t, filepath.Join(dir, "passwd"), passwd.String())

	// contrib, verbatim but for its placeholders, the port and the socket path.
	apiHeader := opt.APIHeader
	if apiHeader == "" {
		apiHeader = testAPIKey
	}
	_, bearer, _ := strings.Cut(apiHeader, "Bearer ")
	conf := contribFile(t, "dovecot/95-mailguard.conf",
		"REPLACE_WITH_THE_KEY_IN_MAILGUARD_DOVECOT_API_HEADER", bearer,
		"REPLACE_WITH_OUTPUT_OF_openssl_rand_-hex_32", "e2e-nonce",
		"http://127.0.0.1:10029/", policyURL)
	writeFile(t, filepath.Join(etc, "conf.d", "95-mailguard.conf"), conf)
	if opt.Webmail {
		writeFile(t, filepath.Join(etc, "conf.d", "96-mailguard-webmail.conf"), contribFile(t, "dovecot/96-mailguard-webmail.conf"))
	}
	if opt.SASLSocket != "" {
		writeFile(t, filepath.Join(etc, "conf.d", "95-postfix-sasl.conf"),
			contribFile(t, "dovecot/95-postfix-sasl.conf", "/var/spool/postfix/private/auth", opt.SASLSocket))
	}

	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	local := fmt.Sprintf(`# What a private instance needs (Debian's dovecot.conf includes local.conf last).
base_dir = %[1]s/run
instance_name = %[2]s
log_path = %[1]s/dovecot.log
listen = %[7]s
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT %[1]s/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=%[1]s/home/%%u
}
service imap-login {
  inet_listener imap {
    port = %[3]s
  }
  inet_listener imaps {
    port = %[4]s
  }
}
service pop3-login {
  inet_listener pop3 {
    port = %[5]s
  }
  inet_listener pop3s {
    port = %[6]s
  }
}
`, dir, filepath.Base(dir), port(d.IMAP), port(d.IMAPS), port(d.POP3), port(d.POP3S), at.listen())
	if opt.SSLRequired {
		certFile, keyFile := testcert.Write(t, dir, "mx.example.org")
		local += fmt.Sprintf("ssl = required\nssl_cert = <%s\nssl_key = <%s\n", certFile, keyFile)
	}
	writeFile(t, filepath.Join(etc, "local.conf"), local)

	// Dovecot daemonizes and its children keep stdout: collect the start
	// output in a file, not a pipe that would never close.
	outFile, err := os.Create(filepath.Join(dir, "start.out"))
	if err != nil {
		t.Fatal(err)
	}
	start := at.command(bin, "-c", d.conf)
	start.Stdout, start.Stderr = outFile, outFile
	err = start.Run()
	outFile.Close()
	if err != nil {
		out, _ := os.ReadFile(outFile.Name())
		t.Fatalf("dovecot: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		at.command(bin, "-c", d.conf, "stop").Run()
		if t.Failed() {
			b, _ := os.ReadFile(d.Log)
			t.Logf("dovecot log:\n%s", b)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := at.dial(d.IMAP); err == nil {
			c.Close()
			if _, err := os.Stat(opt.SASLSocket); opt.SASLSocket == "" || err == nil {
				return d
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(d.Log)
	t.Fatalf("dovecot did not come up; log:\n%s", b)
	return nil
}

// contribFile reads ../contrib/NAME and makes the replacements (old, new
// pairs), each of which must apply: contrib is used as shipped.
func contribFile(t *testing.T, name string, oldNew ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "contrib", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(s, oldNew[i]) {
			t.Fatalf("contrib/%s has no %q to replace", name, oldNew[i])
		}
		s = strings.ReplaceAll(s, oldNew[i], oldNew[i+1])
	}
	return s
}

// editFile replaces old by new in a copied stock file; old must be there.
func editFile(t *testing.T, file, old, new string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s (as installed) has no %q: the stock config changed", file, old)
	}
	writeFile(t, file, strings.Replace(string(b), old, new, 1))
}

func writeFile(t *testing.T, file, content string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(content), fs.FileMode(0o644)); err != nil {
		t.Fatal(err)
	}
}

// imapLogin logs in from src with STARTTLS and LOGIN (stock Dovecot refuses
// plaintext logins) and returns the tagged reply.
func imapLogin(t *testing.T, addr, src, user, pass string) string {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial imap from %s: %v", src, err)
	}
	return imapLoginOn(t, c, user, pass)
}

// imapLoginOn logs in on the new connection c as imapLogin does, closes
// it, and returns the tagged reply.
func imapLoginOn(t *testing.T, c net.Conn, user, pass string) string {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	rd := bufio.NewReader(c)
	if l, _ := rd.ReadString('\n'); !strings.HasPrefix(l, "* OK") {
		t.Fatalf("imap greeting %q", l)
	}
	fmt.Fprintf(c, "a0 STARTTLS\r\n")
	if l, _ := rd.ReadString('\n'); !strings.HasPrefix(l, "a0 OK") {
		t.Fatalf("imap STARTTLS: %q", l)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // Debian's snakeoil certificate
	rd = bufio.NewReader(tc)
	fmt.Fprintf(tc, "a1 LOGIN %q %q\r\n", user, pass)
	for {
		l, err := rd.ReadString('\n')
		if err != nil {
			return strings.TrimSpace(l)
		}
		if strings.HasPrefix(l, "a1 ") {
			fmt.Fprintf(tc, "a2 LOGOUT\r\n")
			return strings.TrimSpace(l)
		}
	}
}
