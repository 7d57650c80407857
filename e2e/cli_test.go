package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// The CLI's exit codes and messages are a contract for scripts.
func TestCLIExitCodes(t *testing.T) {
	d := NewDaemon(t)
	d.Start()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"status", []string{"status"}, 0, "Jail list:\tdovecot, dovecot-user, postfix, postfix-rate"},
		{"status one jail", []string{"status", "dovecot-user"}, 0, "Status for the jail: dovecot-user"},
		{"status unknown jail", []string{"status", "nope"}, 1, `no jail "nope"`},
		{"ban", []string{"ban", "198.51.100.9", "--for", "10m"}, 0, "banned 198.51.100.9 in jail manual"},
		{"ban user in jail", []string{"ban", "Mallory@Example.org", "--jail", "dovecot-user"}, 0, "banned mallory@example.org in jail dovecot-user"},
		{"ban ignoreip", []string{"ban", "::1"}, 1, "inside ignoreip"},
		{"ban bad target", []string{"ban", "not an address"}, 1, "neither an address"},
		{"ban bad duration", []string{"ban", "198.51.100.9", "--for", "soon"}, 2, "invalid argument"},
		{"ban no argument", []string{"ban"}, 2, "ban takes 1 argument"},
		{"unban", []string{"unban", "198.51.100.9"}, 0, "unbanned 198.51.100.9 (jails: manual)"},
		{"unban not banned", []string{"unban", "198.51.100.9"}, 1, "198.51.100.9 is not banned"},
		{"unknown flag", []string{"status", "--bogus"}, 2, "unknown flag"},
	} {
		out, err := d.CLI(tc.args...)
		if code := exitCode(err); code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("mailguard %s: exit %d, %q; want exit %d containing %q", strings.Join(tc.args, " "), code, out, tc.code, tc.want)
		}
	}

	// No daemon on the socket: exit 3 and a hint.
	out, err := exec.Command(binary(t), "status", "--socket", filepath.Join(t.TempDir(), "none.sock")).CombinedOutput()
	if code := exitCode(err); code != 3 || !strings.Contains(string(out), "is `mailguard serve` running?") {
		t.Errorf("status without a daemon: exit %d, %q; want exit 3 and a hint", code, out)
	}
	// MAILGUARD_ADMIN_SOCKET names the socket too.
	cmd := exec.Command(binary(t), "status", "dovecot")
	cmd.Env = append(os.Environ(), "MAILGUARD_ADMIN_SOCKET="+d.Socket)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "Status for the jail: dovecot") {
		t.Errorf("status with MAILGUARD_ADMIN_SOCKET: %v, %q", err, out)
	}

	// A bad config: serve refuses to start (exit 2), naming the key.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("jails:\n  dovecot:\n    maxretry: 0\nstore:\n  backnd: memory\n"), 0o600)
	for _, c := range []string{"serve", "check-config"} {
		out, err := exec.Command(binary(t), c, "--config", bad).CombinedOutput()
		if code := exitCode(err); code != 2 || !strings.Contains(string(out), "jails.dovecot.maxretry: must be at least 1") || !strings.Contains(string(out), "store.backnd: unknown key") {
			t.Errorf("%s with a bad config: exit %d, %q; want exit 2 naming both keys", c, code, out)
		}
	}
	if out, err := exec.Command(binary(t), "check-config", "--config", d.Config).CombinedOutput(); err != nil || !strings.Contains(string(out), "# configuration is valid") {
		t.Errorf("check-config of a good file: %v, %q", err, out)
	}
}

// A store that fails (Redis paused, then killed) is not the daemon saying
// no: status, ban and unban answer 503 and the CLI exits 4, naming the store;
// once Redis is back the same commands work.
func TestCLIStoreFailure(t *testing.T) {
	srv := redistest.StartServer(t, redistest.Config{AppendOnly: true})
	d := NewDaemon(t, redisSets(srv.Addr(), redisPrefix(), "store.timeout=300ms")...)
	d.Start()
	d.MustCLI("ban", "198.51.100.7")
	cmds := [][]string{{"status"}, {"status", "dovecot"}, {"ban", "198.51.100.8"}, {"unban", "198.51.100.7"}}
	check := func(state string) {
		t.Helper()
		for _, args := range cmds {
			out, err := d.CLI(args...)
			if code := exitCode(err); code != 4 || !strings.Contains(out, "the store failed, try again") {
				t.Errorf("with Redis %s, mailguard %s: exit %d, %q; want exit 4 saying the store failed", state, strings.Join(args, " "), code, out)
			}
		}
	}
	srv.Pause()
	check("paused")
	srv.Resume()
	srv.Kill()
	check("killed")
	// A refusal stays a refusal while the store is down.
	if out, err := d.CLI("status", "nope"); exitCode(err) != 1 || !strings.Contains(out, `no jail "nope"`) {
		t.Errorf("status of an unknown jail with Redis down: exit %d, %q; want exit 1", exitCode(err), out)
	}
	if out, err := d.CLI("ban", "not an address"); exitCode(err) != 1 {
		t.Errorf("ban of a bad target with Redis down: exit %d, %q; want exit 1", exitCode(err), out)
	}
	srv.Restart()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := d.CLI("status", "manual")
		if err == nil {
			if !strings.Contains(out, "198.51.100.7") {
				t.Errorf("after Redis came back, status manual does not list the ban made before:\n%s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status still fails 20s after Redis restarted: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.MustCLI("unban", "198.51.100.7")
}

// A login chosen by an attacker, with escape sequences and a newline that
// would forge a status line, is banned through the real Dovecot port and
// shown escaped by status, ban and the daemon's text log.
func TestStatusEscapesLogins(t *testing.T) {
	d := NewDaemon(t, "jails.dovecot-user.maxretry=2", "jails.dovecot.maxretry=50")
	d.Start()
	const login = "\x1b]0;pwned\x07\x1b[2J\x1b[31mevil@example.org\n`- Banned IP list:\t203.0.113.99\r"
	c := &http.Client{Timeout: 10 * time.Second}
	for i, remote := range []string{"192.0.2.41", "192.0.2.42"} {
		body, _ := json.Marshal(map[string]any{"login": login, "pwhash": fmt.Sprintf("%04x", i), "remote": remote,
			"protocol": "imap", "session_id": fmt.Sprintf("esc%d", i), "success": false, "policy_reject": false})
		resp, err := dovecotPost(c, d.Dovecot, "report", body)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("report = %d", resp.StatusCode)
		}
	}
	out := d.MustCLI("status", "dovecot-user")
	// (logins are compared case-insensitively, so the subject is in lower case)
	if !strings.Contains(out, `\x1b]0;pwned\x07\x1b[2j\x1b[31mevil@example.org\n`+"`- banned ip list:"+`\t203.0.113.99`) {
		t.Errorf("status does not show the login escaped:\n%q", out)
	}
	if !strings.Contains(out, "Banned user list:") {
		t.Errorf("a user ban is not under Banned user list:\n%s", out)
	}
	out2, _ := d.CLI("ban", "\x1b[31mred@example.org")
	for name, o := range map[string]string{"status": out, "ban": out2, "log": d.Log()} {
		if strings.ContainsAny(o, "\x1b\x07\r") {
			t.Errorf("%s output carries a raw control character:\n%q", name, o)
		}
		for _, l := range strings.Split(o, "\n") {
			if strings.Contains(l, "203.0.113.99") && !strings.Contains(l, "evil") {
				t.Errorf("%s output has a line forged by the login: %q", name, l)
			}
		}
	}
	if !strings.Contains(out2, `banned \x1b[31mred@example.org in jail manual`) {
		t.Errorf("ban output = %q, want the login escaped", out2)
	}
	// --json stays JSON: the login is there, escaped by JSON.
	var sts []map[string]any
	if err := json.Unmarshal([]byte(d.MustCLI("status", "dovecot-user", "--json")), &sts); err != nil || len(sts) != 1 {
		t.Fatalf("status --json: %v", err)
	}
}
