package e2e

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/internal/testenv"
)

// Postfix is a private Postfix instance, configured as Debian 12's postinst
// configures an "Internet Site" (main.cf.debian, main.cf.tls, the relay
// restrictions and site names it sets) plus contrib/postfix verbatim (the
// policy port changed), plus what a private instance needs: its own
// config, queue and data directories, loopback ports, non-chrooted smtpd
// services (Debian's init script, not `postfix start`, copies the files a
// chroot needs) and maillog_file.
type Postfix struct {
	Addr       string // smtp (port 25's service)
	Submission string // submission (587's): STARTTLS, AUTH, contrib's restrictions
	Conf       string // config_directory
	Log        string // maillog_file
	Queue      string // queue_directory
}

// PostfixOptions change the instance.
type PostfixOptions struct {
	// Set are main.cf parameters (name=value) that `postconf -e` sets
	// after contrib's are in: each replaces the line of its name.
	Set []string
	// At runs Postfix inside a network namespace, listening on its address.
	At place
}

// StartPostfix runs a Postfix whose smtpd asks policy (host:port or
// unix:/path). With Dovecot SASL, its auth socket must be at
// <Queue>/private/auth: pass PostfixSASLSocket(dir) to StartDovecot first.
// At most one opts.
func StartPostfix(t *testing.T, policy string, opts ...PostfixOptions) *Postfix {
	t.Helper()
	var opt PostfixOptions
	if len(opts) > 0 {
		opt = opts[0]
	}
	at := opt.At
	testenv.Root(t)
	postfix := testenv.Command(t, "postfix")
	for _, f := range []string{"/etc/postfix/master.cf", "/usr/share/postfix/main.cf.debian"} {
		if _, err := os.Stat(f); err != nil {
			testenv.Missing(t, "postfix is installed without "+f)
		}
	}
	dir := postfixDir(t)
	p := &Postfix{
		Addr:       net.JoinHostPort(at.listen(), strconv.Itoa(testenv.FreePort(t))),
		Submission: net.JoinHostPort(at.listen(), strconv.Itoa(testenv.FreePort(t))),
		Conf:       filepath.Join(dir, "conf"),
		Log:        "/var/tmp/" + filepath.Base(dir) + ".maillog", // maillog_file must be under /var
		Queue:      filepath.Join(dir, "queue"),
	}
	t.Cleanup(func() { os.Remove(p.Log) })
	for _, d := range []string{"conf", "data", "queue"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "postfix", filepath.Join(dir, "data")).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	if dyn, err := os.ReadFile("/etc/postfix/dynamicmaps.cf"); err == nil {
		os.WriteFile(filepath.Join(p.Conf, "dynamicmaps.cf"), dyn, 0o644)
	}

	policyService := "inet:" + policy
	if strings.HasPrefix(policy, "unix:") {
		policyService = policy
	}
	const contribPolicy = "inet:127.0.0.1:10028"

	// master.cf: Debian's, smtp moved to a loopback port, contrib's
	// submission entries appended on another.
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatal(err)
	}
	smtpLine := regexp.MustCompile(`(?m)^smtp\s+inet\s.*$`)
	if !smtpLine.Match(master) {
		t.Fatal("/etc/postfix/master.cf (as installed) has no smtp inet service")
	}
	master = smtpLine.ReplaceAll(master, []byte(p.Addr+" inet n - n - - smtpd"))
	sub := contribFile(t, "postfix/master.cf", contribPolicy, policyService,
		"submission inet n       -       y       -       -       smtpd", p.Submission+" inet n - n - - smtpd",
		"submissions inet n       -       y       -       -       smtpd", "#submissions inet n - y - - smtpd")
	// One submission service is enough here; the submissions entry stays
	// in the file, commented out like in Debian's.
	sub = regexp.MustCompile(`(?m)^(#submissions .*\n)((?:  -o .*\n)+)`).ReplaceAllStringFunc(sub, func(block string) string {
		return regexp.MustCompile(`(?m)^  -o`).ReplaceAllString(block, "#  -o")
	})
	writeFile(t, filepath.Join(p.Conf, "master.cf"), string(master)+"\n"+sub)

	// main.cf: what Debian's postinst writes for an Internet Site.
	debian, err := os.ReadFile("/usr/share/postfix/main.cf.debian")
	if err != nil {
		t.Fatal(err)
	}
	main := string(debian)
	if tlsConf, err := os.ReadFile("/usr/share/postfix/main.cf.tls"); err == nil {
		if _, err := os.Stat("/etc/ssl/private/ssl-cert-snakeoil.key"); err == nil {
			main += string(tlsConf)
		}
	}
	main += fmt.Sprintf(`smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination
myhostname = mx.example.org
alias_maps = hash:/etc/aliases
alias_database = hash:/etc/aliases
mydestination = $myhostname, mx.example.org, localhost.example.org, localhost
relayhost =
mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128
mailbox_size_limit = 0
recipient_delimiter = +

# What a private instance needs (and inet_interfaces and inet_protocols,
# which an Internet Site sets to all).
queue_directory = %s
data_directory = %s/data
maillog_file = %s
inet_interfaces = loopback-only
inet_protocols = %s

`, p.Queue, dir, p.Log, at.protocols())
	main += contribFile(t, "postfix/main.cf", contribPolicy, policyService)
	writeFile(t, filepath.Join(p.Conf, "main.cf"), main)
	if len(opt.Set) > 0 {
		postconf := testenv.Command(t, "postconf")
		if out, err := exec.Command(postconf, append([]string{"-c", p.Conf, "-e"}, opt.Set...)...).CombinedOutput(); err != nil {
			t.Fatalf("postconf -e: %v\n%s", err, out)
		}
	}

	if out, err := exec.Command(postfix, "-c", p.Conf, "check").CombinedOutput(); err != nil || len(out) > 0 {
		b, _ := os.ReadFile(p.Log)
		t.Fatalf("postfix check: %v\n%s\nmaillog:\n%s", err, out, b)
	}
	if out, err := at.command(postfix, "-c", p.Conf, "start").CombinedOutput(); err != nil {
		t.Fatalf("postfix start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		at.command(postfix, "-c", p.Conf, "stop").Run()
		if t.Failed() {
			b, _ := os.ReadFile(p.Log)
			t.Logf("postfix maillog:\n%s", b)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for _, addr := range []string{p.Addr, p.Submission} {
		for {
			c, err := at.dial(addr)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(p.Log)
				t.Fatalf("postfix did not listen on %s; maillog:\n%s", addr, b)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return p
}

// postfixDir is the test's Postfix directory (its daemons run as user
// postfix: the tree must be traversable), made once per test.
func postfixDir(t *testing.T) string {
	t.Helper()
	if d, ok := postfixDirs.Load(t); ok {
		return d.(string)
	}
	dir, err := os.MkdirTemp("/tmp", "mgpostfix")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir); postfixDirs.Delete(t) })
	postfixDirs.Store(t, dir)
	return dir
}

var postfixDirs sync.Map // *testing.T → dir

// PostfixSASLSocket is where this test's Postfix (StartPostfix) finds
// Dovecot's auth socket: <queue_directory>/private/auth, as smtpd_sasl_path
// = private/auth in contrib/postfix/main.cf says. It makes the directory.
func PostfixSASLSocket(t *testing.T) string {
	t.Helper()
	private := filepath.Join(postfixDir(t), "queue", "private")
	if err := os.MkdirAll(filepath.Dir(private), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(private, 0o700); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	// As Postfix makes it: owned by postfix, mode 0700.
	if out, err := exec.Command("chown", "postfix", private).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	return filepath.Join(private, "auth")
}

// SMTP is a minimal SMTP client session from a chosen source address.
type SMTP struct {
	c  net.Conn
	rd *bufio.Reader
}

// DialSMTP connects to addr from the loopback address src and reads the greeting.
func DialSMTP(t *testing.T, addr, src string) *SMTP {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	return smtpOn(t, c)
}

// smtpOn starts an SMTP session on the new connection c (closed when the
// test ends) and reads the greeting.
func smtpOn(t *testing.T, c net.Conn) *SMTP {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	s := &SMTP{c: c, rd: bufio.NewReader(c)}
	if r := s.reply(t); !strings.HasPrefix(r, "220") {
		t.Fatalf("greeting: %q", r)
	}
	return s
}

// Cmd sends line and returns the (last line of the) reply; "" on EOF.
func (s *SMTP) Cmd(t *testing.T, line string) string {
	t.Helper()
	s.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(s.c, "%s\r\n", line); err != nil {
		return ""
	}
	return s.reply(t)
}

func (s *SMTP) reply(t *testing.T) string {
	t.Helper()
	s.c.SetDeadline(time.Now().Add(30 * time.Second))
	for {
		l, err := s.rd.ReadString('\n')
		if err != nil {
			return strings.TrimSpace(l)
		}
		if len(l) < 4 || l[3] != '-' {
			return strings.TrimSpace(l)
		}
	}
}

// StartTLS upgrades the session after EHLO (Debian's snakeoil certificate:
// not verified) and says EHLO again.
func (s *SMTP) StartTLS(t *testing.T) {
	t.Helper()
	if r := s.Cmd(t, "STARTTLS"); !strings.HasPrefix(r, "220") {
		t.Fatalf("STARTTLS: %q", r)
	}
	tc := tls.Client(s.c, &tls.Config{InsecureSkipVerify: true})
	s.c, s.rd = tc, bufio.NewReader(tc)
	if r := s.Cmd(t, "EHLO client.example.net"); !strings.HasPrefix(r, "250") {
		t.Fatalf("EHLO after STARTTLS: %q", r)
	}
}

// Closed reports whether the server has closed the connection. It sends
// NOOP, which an open session answers at once; a read that times out is an
// open session (a silent server is not a disconnect).
func (s *SMTP) Closed() bool {
	s.c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(s.c, "NOOP\r\n") // may succeed on a closed connection; the read tells
	_, err := s.rd.ReadString('\n')
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// rcpt runs EHLO, MAIL, RCPT from src and returns the RCPT reply and
// whether the server closed the connection after it.
func rcpt(t *testing.T, addr, src string) (string, bool) {
	t.Helper()
	s := DialSMTP(t, addr, src)
	s.Cmd(t, "EHLO client.example.net")
	if r := s.Cmd(t, "MAIL FROM:<a@example.net>"); !strings.HasPrefix(r, "250") {
		t.Fatalf("MAIL FROM from %s: %q", src, r)
	}
	r := s.Cmd(t, "RCPT TO:<postmaster@example.org>")
	closed := s.Closed()
	if !closed {
		s.Cmd(t, "QUIT")
	}
	return r, closed
}

func TestPostfixRefusesBannedClient(t *testing.T) {
	d := NewDaemon(t)
	d.Start()
	pf := StartPostfix(t, d.Postfix)

	// The test daemon ignores 127.0.0.1 only: 127.0.0.2 and .3 are clients.
	const banned, other, ignored = "127.0.0.2", "127.0.0.3", "127.0.0.1"
	for _, src := range []string{banned, other, ignored} {
		if r, _ := rcpt(t, pf.Addr, src); !strings.HasPrefix(r, "250") {
			t.Fatalf("before ban, RCPT from %s = %q, want 250", src, r)
		}
	}
	out := d.MustCLI("ban", banned)
	if !strings.Contains(out, "banned 127.0.0.2") {
		t.Fatalf("ban output %q", out)
	}
	r, closed := rcpt(t, pf.Addr, banned)
	if !strings.HasPrefix(r, "421 4.7.1") || !closed {
		t.Fatalf("after ban, RCPT from %s = %q (closed %v), want 421 4.7.1 and a disconnect", banned, r, closed)
	}
	// The wording README promises: the service is in smtpd_recipient_restrictions.
	if want := "Recipient address rejected: " + config.Defaults().Postfix.RejectAction[len("421 4.7.1 "):]; !strings.Contains(r, want) {
		t.Errorf("after ban, RCPT from %s = %q, want it to contain %q", banned, r, want)
	}
	if r, _ := rcpt(t, pf.Addr, other); !strings.HasPrefix(r, "250") {
		t.Fatalf("after ban, RCPT from %s = %q, want 250", other, r)
	}
	// An ignoreip address is never banned, whatever the CLI says.
	out, err := d.CLI("ban", ignored)
	if code := exitCode(err); code != 1 || !strings.Contains(out, "ignoreip") {
		t.Fatalf("ban %s: exit %d, %q; want exit 1 naming ignoreip", ignored, code, out)
	}
	if r, _ := rcpt(t, pf.Addr, ignored); !strings.HasPrefix(r, "250") {
		t.Fatalf("RCPT from ignored %s = %q, want 250", ignored, r)
	}
	d.MustCLI("unban", banned)
	if r, _ := rcpt(t, pf.Addr, banned); !strings.HasPrefix(r, "250") {
		t.Fatalf("after unban, RCPT from %s = %q, want 250", banned, r)
	}
}
