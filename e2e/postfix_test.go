package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// Postfix is a private Postfix instance (own config_directory, queue and
// data directories) with a non-chroot smtpd on a free loopback port.
type Postfix struct {
	Addr string // smtpd listen address
	Conf string // config_directory
	Log  string // maillog_file
}

// StartPostfix runs a Postfix whose smtpd asks policy (host:port or
// unix:/path) at RCPT time. mainExtra is appended to main.cf.
func StartPostfix(t *testing.T, policy, mainExtra string) *Postfix {
	t.Helper()
	testenv.Root(t)
	postfix := testenv.Command(t, "postfix")
	if _, err := os.Stat("/etc/postfix/master.cf"); err != nil {
		testenv.Missing(t, "postfix is installed without /etc/postfix/master.cf")
	}
	// Postfix's daemons run as user postfix: the tree must be traversable.
	dir, err := os.MkdirTemp("/tmp", "mgpostfix")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	p := &Postfix{
		Addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Conf: filepath.Join(dir, "conf"),
		Log:  "/var/tmp/" + filepath.Base(dir) + ".maillog", // maillog_file must be under /var
	}
	for _, d := range []string{"conf", "queue", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "postfix", filepath.Join(dir, "data")).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatal(err)
	}
	smtpLine := regexp.MustCompile(`(?m)^smtp\s+inet\s.*$`)
	master = smtpLine.ReplaceAll(master, []byte(p.Addr+" inet n - n - - smtpd"))
	if dyn, err := os.ReadFile("/etc/postfix/dynamicmaps.cf"); err == nil {
		os.WriteFile(filepath.Join(p.Conf, "dynamicmaps.cf"), dyn, 0o644)
	}
	if err := os.WriteFile(filepath.Join(p.Conf, "master.cf"), master, 0o644); err != nil {
		t.Fatal(err)
	}
	policyService := "inet:" + policy
	if strings.HasPrefix(policy, "unix:") {
		policyService = policy
	}
	main := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %s/queue
data_directory = %s/data
myhostname = mx.example.org
mydestination = example.org
local_recipient_maps =
inet_interfaces = loopback-only
inet_protocols = ipv4
maillog_file = %s
mynetworks =
smtpd_recipient_restrictions =
    check_policy_service { %s, default_action=DUNNO }
    permit_sasl_authenticated
    reject_unauth_destination
%s
`, dir, dir, p.Log, policyService, mainExtra)
	if err := os.WriteFile(filepath.Join(p.Conf, "main.cf"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(postfix, "-c", p.Conf, "start").CombinedOutput(); err != nil {
		t.Fatalf("postfix start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		exec.Command(postfix, "-c", p.Conf, "stop").Run()
		if t.Failed() {
			b, _ := os.ReadFile(p.Log)
			t.Logf("postfix maillog:\n%s", b)
		}
		os.Remove(p.Log)
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", p.Addr); err == nil {
			c.Close()
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(p.Log)
	t.Fatalf("postfix did not listen on %s; maillog:\n%s", p.Addr, b)
	return nil
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

// Closed reports whether the server has closed the connection.
func (s *SMTP) Closed() bool {
	s.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := s.rd.ReadByte()
	return err != nil
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
	pf := StartPostfix(t, d.Postfix, "")

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
