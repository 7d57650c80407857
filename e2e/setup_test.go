package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testcert"
	"github.com/mailguard/mailguard/internal/testenv"
)

// The stock trees are copied, never touched: every test works on a private
// copy in a temp dir, changed only where a private instance must differ
// (directories, log, listen ports, a certificate made by the test, a
// passwd-file user) and by `mailguard setup --write` itself.

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(testenv.Command(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// stockPostfix is a private copy of /etc/postfix.
type stockPostfix struct {
	Dir              string // config_directory
	SMTP, Submission string // listen addresses of smtp and submission
	Log              string
	root             string
}

// newStockPostfix copies /etc/postfix. Without a main.cf (Debian's "No
// configuration") it writes the one Debian's postinst makes for an Internet
// site: main.cf.debian, main.cf.tls and its relay restrictions. It enables
// the submission and submissions entries as master.cf's comments show them.
func newStockPostfix(t *testing.T) *stockPostfix {
	t.Helper()
	testenv.Root(t)
	testenv.Command(t, "postfix")
	if _, err := os.Stat("/etc/postfix/master.cf"); err != nil {
		testenv.Missing(t, "postfix is installed without /etc/postfix/master.cf")
	}
	root, err := os.MkdirTemp("/tmp", "mgstockpf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	p := &stockPostfix{
		Dir: filepath.Join(root, "postfix"), root: root,
		SMTP:       fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Submission: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Log:        "/var/tmp/" + filepath.Base(root) + ".maillog", // maillog_file must be under /var
	}
	run(t, "cp", "-a", "/etc/postfix", p.Dir)
	for _, d := range []string{"queue", "data"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "chown", "postfix", filepath.Join(root, "data"))
	mainCf := filepath.Join(p.Dir, "main.cf")
	if _, err := os.Stat(mainCf); err != nil {
		var b []byte
		for _, f := range []string{"/usr/share/postfix/main.cf.debian", "/usr/share/postfix/main.cf.tls"} {
			x, err := os.ReadFile(f)
			if err != nil {
				testenv.Missing(t, "no /etc/postfix/main.cf and no "+f)
			}
			b = append(append(b, x...), '\n')
		}
		b = append(b, "smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination\n"...)
		if err := os.WriteFile(mainCf, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	master, err := os.ReadFile(filepath.Join(p.Dir, "master.cf"))
	if err != nil {
		t.Fatal(err)
	}
	m := string(master)
	// Enable the commented submission/submissions entries, with their -o lines.
	var lines []string
	on := false
	for _, l := range strings.Split(m, "\n") {
		switch {
		case strings.HasPrefix(l, "#submission ") || strings.HasPrefix(l, "#submissions "):
			on = true
			l = l[1:]
		case on && strings.HasPrefix(l, "#  -o "):
			l = l[1:]
		case on && strings.HasPrefix(l, "#     "):
		default:
			on = false
		}
		lines = append(lines, l)
	}
	m = strings.Join(lines, "\n")
	// A private instance: listeners on free loopback ports, not chrooted
	// (its queue directory is no chroot jail).
	sub := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	for re, repl := range map[string]string{
		`(?m)^smtp\s+inet\s.*$`:        p.SMTP + " inet n - n - - smtpd",
		`(?m)^submission\s+inet\s.*$`:  p.Submission + " inet n - n - - smtpd",
		`(?m)^submissions\s+inet\s.*$`: sub + " inet n - n - - smtpd",
	} {
		if !regexp.MustCompile(re).MatchString(m) {
			t.Fatalf("master.cf of this Postfix has no line %s", re)
		}
		m = regexp.MustCompile(re).ReplaceAllString(m, repl)
	}
	if err := os.WriteFile(filepath.Join(p.Dir, "master.cf"), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, key := testcert.Write(t, root, "mx.example.org")
	for _, kv := range []string{
		"queue_directory = " + root + "/queue", "data_directory = " + root + "/data",
		"maillog_file = " + p.Log, "inet_interfaces = loopback-only", "inet_protocols = ipv4",
		"myhostname = mx.example.org", "mydestination = example.org", "local_recipient_maps =",
		"mynetworks = 127.0.0.1/32", "smtpd_tls_cert_file = " + cert, "smtpd_tls_key_file = " + key,
	} {
		run(t, "postconf", "-c", p.Dir, "-e", kv)
	}
	return p
}

func (p *stockPostfix) start(t *testing.T) {
	t.Helper()
	run(t, "postfix", "-c", p.Dir, "start")
	t.Cleanup(func() {
		exec.Command(testenv.Command(t, "postfix"), "-c", p.Dir, "stop").Run()
		if t.Failed() {
			b, _ := os.ReadFile(p.Log)
			t.Logf("postfix maillog:\n%s", b)
		}
		os.Remove(p.Log)
	})
	waitListen(t, p.SMTP)
	waitListen(t, p.Submission)
}

func waitListen(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s after 20s", addr)
}

// stockDovecot is a private copy of /etc/dovecot.
type stockDovecot struct {
	Conf string // dovecot.conf of the copy
	IMAP string
	Log  string
}

const stockUser, stockPassword = "alice@example.org", "correct horse"

// newStockDovecot copies /etc/dovecot. A private instance differs from the
// stock one in local.conf (read last by Debian's dovecot.conf): its own
// base_dir, log, instance name, loopback listeners on free ports and a
// certificate made by the test; and in taking its users from a passwd-file
// (10-auth.conf's auth-passwdfile.conf.ext instead of auth-system, pointed at
// a file in the temp dir). Everything else, plaintext refused without TLS and
// Dovecot's auth penalty included, is stock.
func newStockDovecot(t *testing.T) *stockDovecot {
	t.Helper()
	testenv.Root(t)
	testenv.Command(t, "dovecot")
	doveadm := testenv.Command(t, "doveadm")
	if _, err := os.Stat("/etc/dovecot/dovecot.conf"); err != nil {
		testenv.Missing(t, "dovecot is installed without /etc/dovecot/dovecot.conf")
	}
	root, err := os.MkdirTemp("/tmp", "mgstockdv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	dir := filepath.Join(root, "dovecot")
	run(t, "cp", "-a", "/etc/dovecot", dir)
	d := &stockDovecot{
		Conf: filepath.Join(dir, "dovecot.conf"), Log: filepath.Join(root, "dovecot.log"),
		IMAP: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
	}
	hash, err := exec.Command(doveadm, "pw", "-s", "SHA512-CRYPT", "-p", stockPassword).Output()
	if err != nil {
		t.Fatalf("doveadm pw: %v", err)
	}
	users := filepath.Join(root, "users")
	line := fmt.Sprintf("%s:%s:65534:65534::%s/home/alice::\n", stockUser, strings.TrimSpace(string(hash)), root)
	if err := os.WriteFile(users, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	edit := func(file, old, repl string) {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), old) {
			t.Fatalf("%s has no %q", file, old)
		}
		if err := os.WriteFile(file, []byte(strings.ReplaceAll(string(b), old, repl)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	edit(filepath.Join(dir, "conf.d", "10-auth.conf"), "\n!include auth-system.conf.ext", "\n#!include auth-system.conf.ext")
	edit(filepath.Join(dir, "conf.d", "10-auth.conf"), "#!include auth-passwdfile.conf.ext", "!include auth-passwdfile.conf.ext")
	edit(filepath.Join(dir, "conf.d", "auth-passwdfile.conf.ext"), "/etc/dovecot/users", users)
	cert, key := testcert.Write(t, root, "mx.example.org")
	_, port, _ := net.SplitHostPort(d.IMAP)
	local := fmt.Sprintf(`base_dir = %[1]s/run
log_path = %[2]s
instance_name = %[3]s
listen = 127.0.0.1
protocols = imap
ssl_cert = <%[4]s
ssl_key = <%[5]s
service imap-login {
  inet_listener imap {
    port = %[6]s
  }
  inet_listener imaps {
    port = 0
  }
}
`, root, d.Log, filepath.Base(root), cert, key, port)
	if err := os.WriteFile(filepath.Join(dir, "local.conf"), []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *stockDovecot) start(t *testing.T) {
	t.Helper()
	bin := testenv.Command(t, "dovecot")
	// Dovecot daemonizes and its children keep stdout: no pipe.
	start := exec.Command(bin, "-c", d.Conf)
	if err := start.Run(); err != nil {
		b, _ := os.ReadFile(d.Log)
		t.Fatalf("dovecot -c %s: %v\n%s", d.Conf, err, b)
	}
	t.Cleanup(func() {
		exec.Command(bin, "-c", d.Conf, "stop").Run()
		if t.Failed() {
			b, _ := os.ReadFile(d.Log)
			t.Logf("dovecot log:\n%s", b)
		}
	})
	waitListen(t, d.IMAP)
}

// imapTLSLogin logs in from src after STARTTLS (stock Dovecot refuses
// plaintext logins otherwise) and returns the tagged LOGIN reply.
func imapTLSLogin(t *testing.T, addr, src, user, pass string) string {
	t.Helper()
	dl := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := dl.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial imap from %s: %v", src, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(40 * time.Second))
	rd := bufio.NewReader(c)
	tagged := func(rd *bufio.Reader, tag string) string {
		for {
			l, err := rd.ReadString('\n')
			if err != nil || strings.HasPrefix(l, tag+" ") {
				return strings.TrimSpace(l)
			}
		}
	}
	if l, _ := rd.ReadString('\n'); !strings.HasPrefix(l, "* OK") {
		t.Fatalf("imap greeting %q", l)
	}
	fmt.Fprintf(c, "a0 STARTTLS\r\n")
	if r := tagged(rd, "a0"); !strings.HasPrefix(r, "a0 OK") {
		t.Fatalf("STARTTLS = %q", r)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // the test's own certificate
	if err := tc.Handshake(); err != nil {
		t.Fatalf("imap TLS handshake: %v", err)
	}
	trd := bufio.NewReader(tc)
	fmt.Fprintf(tc, "a1 LOGIN %q %q\r\n", user, pass)
	r := tagged(trd, "a1")
	fmt.Fprintf(tc, "a2 LOGOUT\r\n")
	return r
}

// submissionRCPT runs EHLO, STARTTLS, EHLO, MAIL, RCPT on a submission port
// from src and returns the RCPT reply.
func submissionRCPT(t *testing.T, addr, src string) string {
	t.Helper()
	dl := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := dl.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	s := &SMTP{c: c, rd: bufio.NewReader(c)}
	if r := s.reply(t); !strings.HasPrefix(r, "220") {
		t.Fatalf("greeting %q", r)
	}
	s.Cmd(t, "EHLO client.example.net")
	if r := s.Cmd(t, "STARTTLS"); !strings.HasPrefix(r, "220") {
		t.Fatalf("STARTTLS = %q", r)
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true}) // the test's own certificate
	if err := tc.Handshake(); err != nil {
		t.Fatalf("smtp TLS handshake: %v", err)
	}
	s = &SMTP{c: tc, rd: bufio.NewReader(tc)}
	s.Cmd(t, "EHLO client.example.net")
	if r := s.Cmd(t, "MAIL FROM:<a@example.net>"); !strings.HasPrefix(r, "250") {
		t.Fatalf("MAIL FROM on submission from %s: %q", src, r)
	}
	return s.Cmd(t, "RCPT TO:<postmaster@example.org>")
}

const (
	setupAPIHeader = "Authorization: Bearer e2e-setup-key"
	setupRejectMsg = "Too many failed logins, e2e setup"
)

// setupDaemon runs mailguard with an API header and a known reject text in
// its config file, where setup and doctor read them too.
func setupDaemon(t *testing.T) *Daemon {
	t.Helper()
	d := NewDaemon(t)
	b, err := os.ReadFile(d.Config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := regexp.MustCompile(`(?m)^  (api_header|reject_msg): .*\n`).ReplaceAllString(string(b), "")
	cfg = strings.Replace(cfg, "dovecot:\n", fmt.Sprintf("dovecot:\n  api_header: %q\n  reject_msg: %q\n", setupAPIHeader, setupRejectMsg), 1)
	if !strings.Contains(cfg, setupAPIHeader) {
		t.Fatalf("no dovecot: section in the test config:\n%s", b)
	}
	if err := os.WriteFile(d.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Start()
	return d
}

// `setup postfix --write` on a stock Debian tree with submission and
// submissions enabled: postfix check accepts it, a second run has nothing
// to do, and the Postfix started from it refuses a banned client on the
// smtp port and on submission (whose master.cf entry overrides
// smtpd_recipient_restrictions).
func TestSetupPostfixWrite(t *testing.T) {
	pf := newStockPostfix(t)
	d := setupDaemon(t)
	setup := func(args ...string) string {
		t.Helper()
		return d.MustCLI(append([]string{"setup", "postfix", "--config", d.Config, "--postfix-config", pf.Dir}, args...)...)
	}

	// contrib's element (its attributes may change there) at d.Postfix.
	policy := `check_policy_service \{ inet:` + regexp.QuoteMeta(d.Postfix) + `, [^{}]*default_action=DUNNO[^{}]*\}`
	printed := setup()
	for _, want := range []string{
		`(?m)^smtpd_recipient_restrictions = ` + policy + `$`,
		`(?m)^  -o \{ smtpd_recipient_restrictions = ` + policy + `, permit_sasl_authenticated, reject \}$`,
	} {
		if !regexp.MustCompile(want).MatchString(printed) {
			t.Fatalf("setup postfix does not print %s:\n%s", want, printed)
		}
	}
	before, _ := os.ReadFile(filepath.Join(pf.Dir, "main.cf"))
	out := setup("--write")
	if !strings.Contains(out, "postfix check: ok") || !strings.Contains(out, "reload") {
		t.Fatalf("setup postfix --write:\n%s", out)
	}
	m := regexp.MustCompile(`backup: (\S+main\.cf\.mailguard-\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no main.cf backup named in:\n%s", out)
	}
	if bak, _ := os.ReadFile(m[1]); string(bak) != string(before) {
		t.Fatalf("backup %s is not the old main.cf", m[1])
	}
	run(t, "postfix", "-c", pf.Dir, "check")
	overrides := run(t, "postconf", "-c", pf.Dir, "-P")
	if want := `(?m)^` + regexp.QuoteMeta(pf.Submission) + `/inet/smtpd_recipient_restrictions = ` + policy + `, permit_sasl_authenticated, reject$`; !regexp.MustCompile(want).MatchString(overrides) {
		t.Fatalf("postconf -P has no %s:\n%s", want, overrides)
	}
	if out := setup(); !strings.Contains(out, "nothing to change") {
		t.Fatalf("second setup postfix:\n%s", out)
	}

	pf.start(t)
	const banned, other = "127.0.0.2", "127.0.0.3"
	if r, _ := rcpt(t, pf.SMTP, banned); !strings.HasPrefix(r, "250") {
		t.Fatalf("before the ban, RCPT from %s = %q, want 250", banned, r)
	}
	d.MustCLI("ban", banned)
	r, closed := rcpt(t, pf.SMTP, banned)
	if !strings.HasPrefix(r, "421 4.7.1") || !strings.Contains(r, "Recipient address rejected") || !closed {
		t.Fatalf("smtp: RCPT from banned %s = %q (closed %v), want 421 4.7.1 ... Recipient address rejected and a disconnect", banned, r, closed)
	}
	if r, _ := rcpt(t, pf.SMTP, other); !strings.HasPrefix(r, "250") {
		t.Fatalf("smtp: RCPT from %s = %q, want 250", other, r)
	}
	if r := submissionRCPT(t, pf.Submission, banned); !strings.HasPrefix(r, "421 4.7.1") {
		t.Fatalf("submission: RCPT from banned %s = %q, want 421 4.7.1", banned, r)
	}
	// Not banned and not authenticated: the policy says DUNNO and the
	// entry's own permit_sasl_authenticated, reject decides.
	if r := submissionRCPT(t, pf.Submission, other); !strings.HasPrefix(r, "554") {
		t.Fatalf("submission: RCPT from %s without AUTH = %q, want 554 from the entry's reject", other, r)
	}
}

// `setup dovecot` prints contrib's file for the installed version with the
// secrets masked; --write installs it with a fresh nonce that doveconf
// accepts, keeps that nonce on the next run, and the Dovecot started from
// the copy refuses a banned client with mailguard's message.
func TestSetupDovecotWrite(t *testing.T) {
	dv := newStockDovecot(t)
	d := setupDaemon(t)
	setup := func(args ...string) string {
		t.Helper()
		return d.MustCLI(append([]string{"setup", "dovecot", "--config", d.Config, "--dovecot-config", dv.Conf}, args...)...)
	}
	printed := setup()
	version := strings.Fields(run(t, "dovecot", "--version"))[0]
	for _, want := range []string{"auth_policy_server_url = http://" + d.Dovecot + "/", "Dovecot " + version} {
		if !strings.Contains(printed, want) {
			t.Fatalf("setup dovecot does not print %q:\n%s", want, printed)
		}
	}
	if strings.Contains(printed, "e2e-setup-key") {
		t.Fatalf("setup dovecot prints the API key:\n%s", printed)
	}
	for _, l := range strings.Split(printed, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") && strings.Contains(l, "REPLACE_") {
			t.Fatalf("setup dovecot leaves a placeholder: %q", l)
		}
	}
	if shown := setup("--show-secrets"); !strings.Contains(shown, "auth_policy_server_api_header = "+setupAPIHeader) {
		t.Fatalf("setup dovecot --show-secrets does not show the header:\n%s", shown)
	}

	out := setup("--write")
	if !strings.Contains(out, "doveconf: ok") || !strings.Contains(out, "fresh auth_policy_hash_nonce") {
		t.Fatalf("setup dovecot --write:\n%s", out)
	}
	run(t, "doveconf", "-c", dv.Conf) // the whole config parses
	get := func(name string) string {
		return strings.TrimSpace(run(t, "doveconf", "-c", dv.Conf, "-h", name))
	}
	nonce := get("auth_policy_hash_nonce")
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(nonce) {
		t.Fatalf("nonce after setup is not 32 random bytes in hex")
	}
	if h := get("auth_policy_server_api_header"); h != setupAPIHeader {
		t.Fatalf("auth_policy_server_api_header is not dovecot.api_header")
	}
	file := filepath.Join(filepath.Dir(dv.Conf), "conf.d", "95-mailguard.conf")
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm()&0o007 != 0 {
		t.Fatalf("%s: %v, mode %v: want it unreadable by others (it holds the API key)", file, err, fi.Mode())
	}
	// Another run keeps the nonce (it must be the same on every Dovecot of
	// the site) and has nothing to write.
	if out := setup("--write"); !strings.Contains(out, "up to date") {
		t.Fatalf("second setup dovecot --write:\n%s", out)
	}
	if get("auth_policy_hash_nonce") != nonce {
		t.Fatalf("the second run changed the nonce")
	}

	dv.start(t)
	const banned, other = "127.0.0.2", "127.0.0.3"
	if r := imapTLSLogin(t, dv.IMAP, other, stockUser, stockPassword); strings.Contains(r, setupRejectMsg) {
		t.Fatalf("login from %s = %q: refused before any ban", other, r)
	}
	d.MustCLI("ban", banned)
	want := "a1 NO [ALERT] " + setupRejectMsg
	if r := imapTLSLogin(t, dv.IMAP, banned, stockUser, stockPassword); r != want {
		t.Fatalf("login from banned %s = %q, want %q", banned, r, want)
	}
	if r := imapTLSLogin(t, dv.IMAP, other, stockUser, stockPassword); strings.Contains(r, setupRejectMsg) {
		t.Fatalf("login from %s = %q: refused, it is not banned", other, r)
	}
}

// Without dovecot.api_header, setup fills in the key the daemon keeps in
// state_dir, making it when the daemon has not run yet.
func TestSetupDovecotDaemonKey(t *testing.T) {
	dv := newStockDovecot(t)
	d := NewDaemon(t) // not started: setup may come first
	b, err := os.ReadFile(d.Config)
	if err != nil {
		t.Fatal(err)
	}
	cfg := regexp.MustCompile(`(?m)^  api_header: .*\n`).ReplaceAllString(string(b), "")
	if err := os.WriteFile(d.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d.MustCLI("setup", "dovecot", "--write", "--config", d.Config, "--dovecot-config", dv.Conf)
	keyFile := filepath.Join(d.Dir, "dovecot-api.key")
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatalf("setup made no key: %v", err)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", keyFile, fi.Mode().Perm())
	}
	got := strings.TrimSpace(run(t, "doveconf", "-c", dv.Conf, "-h", "auth_policy_server_api_header"))
	if got != "Authorization: Bearer "+strings.TrimSpace(string(key)) {
		t.Fatalf("Dovecot's auth_policy_server_api_header is not the daemon's key")
	}
}
