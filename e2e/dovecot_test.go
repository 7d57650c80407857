package e2e

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// Dovecot is a private Dovecot instance (own base_dir and config) with IMAP
// and POP3 on free loopback ports, a passwd-file user, and mailguard as its
// auth policy server.
type Dovecot struct {
	IMAP, POP3 string
	AuthSocket string // auth-client socket for Postfix SASL
	Log        string
	conf       string
}

const (
	testUser     = "alice@example.org"
	testPassword = "correct horse"
	testAPIKey   = "Authorization: Bearer e2e-secret"
)

// StartDovecot runs Dovecot with its auth policy pointed at policyURL.
func StartDovecot(t *testing.T, policyURL string) *Dovecot {
	t.Helper()
	testenv.Root(t)
	bin := testenv.Command(t, "dovecot")
	doveadm := testenv.Command(t, "doveadm")
	dir, err := os.MkdirTemp("/tmp", "mgdovecot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	hash, err := exec.Command(doveadm, "pw", "-s", "SHA512-CRYPT", "-p", testPassword).Output()
	if err != nil {
		t.Fatalf("doveadm pw: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "passwd"), []byte(testUser+":"+strings.TrimSpace(string(hash))+"::::::\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &Dovecot{
		IMAP: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		POP3: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Log:  filepath.Join(dir, "dovecot.log"), conf: filepath.Join(dir, "dovecot.conf"),
		AuthSocket: filepath.Join(dir, "run", "auth-client"),
	}
	_, imapPort, _ := net.SplitHostPort(d.IMAP)
	_, pop3Port, _ := net.SplitHostPort(d.POP3)
	conf := fmt.Sprintf(`base_dir = %[1]s/run
log_path = %[1]s/dovecot.log
instance_name = %[5]s
ssl = no
disable_plaintext_auth = no
protocols = imap pop3
listen = 127.0.0.1
auth_mechanisms = plain login
auth_failure_delay = 0
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
    port = %[2]s
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    port = %[3]s
  }
  inet_listener pop3s {
    port = 0
  }
}
service auth {
  unix_listener auth-client {
    mode = 0666
  }
}
# No anvil auth penalty (it delays repeated failures from one address by up
# to 15s): mailguard's tarpit is what is under test.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
auth_policy_server_url = %[4]s
auth_policy_hash_nonce = e2e-nonce
auth_policy_server_api_header = %[6]s
auth_policy_request_attributes = login=%%{requested_username} pwhash=%%{hashed_password} remote=%%{rip} device_id=%%{client_id} protocol=%%s session_id=%%{session}
`, dir, imapPort, pop3Port, policyURL, filepath.Base(dir), testAPIKey)
	if err := os.WriteFile(d.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// Dovecot daemonizes and its children keep stdout: collect the start
	// output in a file, not a pipe that would never close.
	outFile, err := os.Create(filepath.Join(dir, "start.out"))
	if err != nil {
		t.Fatal(err)
	}
	start := exec.Command(bin, "-c", d.conf)
	start.Stdout, start.Stderr = outFile, outFile
	err = start.Run()
	outFile.Close()
	if err != nil {
		out, _ := os.ReadFile(outFile.Name())
		t.Fatalf("dovecot: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		exec.Command(bin, "-c", d.conf, "stop").Run()
		if t.Failed() {
			b, _ := os.ReadFile(d.Log)
			t.Logf("dovecot log:\n%s", b)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", d.IMAP); err == nil {
			c.Close()
			if _, err := os.Stat(d.AuthSocket); err == nil {
				return d
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(d.Log)
	t.Fatalf("dovecot did not come up; log:\n%s", b)
	return nil
}

// imapLogin logs in from src with LOGIN and returns the tagged reply.
func imapLogin(t *testing.T, addr, src, user, pass string) string {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial imap from %s: %v", src, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	rd := bufio.NewReader(c)
	if l, _ := rd.ReadString('\n'); !strings.HasPrefix(l, "* OK") {
		t.Fatalf("imap greeting %q", l)
	}
	fmt.Fprintf(c, "a1 LOGIN %q %q\r\n", user, pass)
	for {
		l, err := rd.ReadString('\n')
		if err != nil {
			return strings.TrimSpace(l)
		}
		if strings.HasPrefix(l, "a1 ") {
			fmt.Fprintf(c, "a2 LOGOUT\r\n")
			return strings.TrimSpace(l)
		}
	}
}

func smtpAuthPlain(t *testing.T, addr, src, user, pass string) string {
	t.Helper()
	s := DialSMTP(t, addr, src)
	s.Cmd(t, "EHLO client.example.net")
	r := s.Cmd(t, "AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)))
	s.Cmd(t, "QUIT")
	return r
}
