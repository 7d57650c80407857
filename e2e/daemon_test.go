// Package e2e runs the real mailguard binary against real Postfix, Dovecot
// and Redis. Tests that need root or a missing server skip with a reason, and
// fail under CI=true.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds cmd/mailguard once per test run (with -race, like the tests).
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mailguard-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		os.Chmod(dir, 0o755) // the binary also runs as nobody
		binPath = filepath.Join(dir, "mailguard")
		out, err := exec.Command("go", "build", "-race", "-o", binPath, "../cmd/mailguard").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Daemon is a running `mailguard serve`.
type Daemon struct {
	t       *testing.T
	Dir     string // state_dir
	Config  string // config file
	Socket  string // admin socket
	Postfix string // postfix.listen
	Dovecot string // dovecot.listen
	Metrics string
	// NetNS, when set before Start, runs the daemon and the CLI inside that
	// network namespace (`ip netns exec NAME`): its listeners are on the
	// namespace's loopback and its firewall backend acts on the namespace.
	// The admin socket is in the shared filesystem, so the CLI reaches it.
	NetNS string
	// Env is added to the daemon's environment (KEY=VALUE).
	Env []string
	// Wrap, when set, runs `mailguard serve` through this command and its
	// arguments (prlimit, setpriv ...), which must exec it in place.
	Wrap []string
	sets []string
	cmd  *exec.Cmd
	log  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// NewDaemon writes a config in a fresh directory; sets are --set KEY=VALUE
// overrides. Call Start to run it.
func NewDaemon(t *testing.T, sets ...string) *Daemon {
	t.Helper()
	dir := t.TempDir()
	d := &Daemon{
		t: t, Dir: filepath.Join(dir, "state"), Config: filepath.Join(dir, "mailguard.yaml"),
		Socket:  filepath.Join(dir, "admin.sock"),
		Postfix: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Dovecot: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		Metrics: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		sets:    sets,
	}
	cfg := fmt.Sprintf(`state_dir: %s
ignoreip: [127.0.0.1, "::1"]
admin:
  socket: %s
postfix:
  listen: %s
dovecot:
  listen: %s
  api_header: %q
metrics:
  listen: %s
log:
  level: debug
`, d.Dir, d.Socket, d.Postfix, d.Dovecot, testAPIKey, d.Metrics)
	if err := os.WriteFile(d.Config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

// Start runs the daemon and waits until its admin socket answers.
func (d *Daemon) Start() {
	d.t.Helper()
	d.log = &syncBuffer{}
	args := []string{"serve", "--config", d.Config}
	for _, s := range d.sets {
		args = append(args, "--set", s)
	}
	d.cmd = d.command(context.Background(), args...)
	if len(d.Wrap) > 0 {
		d.cmd = exec.Command(d.Wrap[0], append(append(d.Wrap[1:len(d.Wrap):len(d.Wrap)], binary(d.t)), args...)...)
	}
	if len(d.Env) > 0 {
		d.cmd.Env = append(os.Environ(), d.Env...)
	}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	cmd := d.cmd
	d.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
			}
		}
		if d.t.Failed() {
			d.t.Logf("mailguard log:\n%s", d.log.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := d.CLI("status"); err == nil {
			if d.NetNS != "" {
				return // its TCP listeners, bound before the admin socket, are not reachable from here
			}
			if c, err := net.Dial("tcp", d.Postfix); err == nil {
				c.Close()
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("mailguard did not come up in 20s; log:\n%s", d.log.String())
}

// Kill sends SIGKILL and waits.
func (d *Daemon) Kill() {
	d.cmd.Process.Kill()
	d.cmd.Wait()
}

// Stop sends SIGTERM and waits for a clean exit.
func (d *Daemon) Stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		d.t.Fatalf("mailguard exited with %v; log:\n%s", err, d.log.String())
	}
}

// Log returns what the daemon logged so far.
func (d *Daemon) Log() string { return d.log.String() }

// CLI runs a mailguard client command against this daemon.
func (d *Daemon) CLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := d.command(ctx, append(args, "--socket", d.Socket)...).CombinedOutput()
	return string(out), err
}

// command runs the mailguard binary with args, inside NetNS when set (ip
// execs the binary in place: the process is mailguard itself).
func (d *Daemon) command(ctx context.Context, args ...string) *exec.Cmd {
	if d.NetNS == "" {
		return exec.CommandContext(ctx, binary(d.t), args...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", d.NetNS, binary(d.t)}, args...)...)
}

// exitCode returns a command's exit status (0 for nil).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// DovecotHeader returns the API header line the daemon wants from Dovecot:
// testAPIKey unless a --set changed dovecot.api_header; with it set empty,
// the key the daemon made in its state_dir ("" with insecure_no_auth).
func (d *Daemon) DovecotHeader() string {
	d.t.Helper()
	h, insecure := testAPIKey, false
	for _, s := range d.sets {
		if v, ok := strings.CutPrefix(s, "dovecot.api_header="); ok {
			h = v
		}
		if s == "dovecot.insecure_no_auth=true" {
			insecure = true
		}
	}
	if h != "" || insecure {
		return h
	}
	b, err := os.ReadFile(filepath.Join(d.Dir, "dovecot-api.key"))
	if err != nil {
		d.t.Fatalf("reading the daemon's Dovecot API key: %v", err)
	}
	return "Authorization: Bearer " + strings.TrimSpace(string(b))
}

// dovecotPost posts body to a dovecot.listen at addr as Dovecot does, with
// the harness's API header (testAPIKey).
func dovecotPost(c *http.Client, addr, command string, body []byte) (*http.Response, error) {
	return dovecotPostHeader(c, addr, command, testAPIKey, body)
}

// dovecotPostHeader posts with the header line h ("Name: value"; "" none).
func dovecotPostHeader(c *http.Client, addr, command, h string, body []byte) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/?command="+command, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if name, v, ok := strings.Cut(h, ":"); ok {
		req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(v))
	}
	return c.Do(req)
}

// MustCLI runs a client command that must succeed.
func (d *Daemon) MustCLI(args ...string) string {
	d.t.Helper()
	out, err := d.CLI(args...)
	if err != nil {
		d.t.Fatalf("mailguard %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}
