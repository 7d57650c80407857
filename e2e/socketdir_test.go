package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

const (
	nobodyUID  = 65534
	hostileUID = 12345 // another local user
)

// asNobody runs the mailguard binary as nobody, without XDG_RUNTIME_DIR,
// with TMPDIR (where the admin socket directory goes) and XDG_STATE_HOME set.
func asNobody(ctx context.Context, t *testing.T, tmp, state string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "TMPDIR=" + tmp, "XDG_STATE_HOME=" + state}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyUID, Groups: []uint32{}}}
	return cmd
}

// As a normal user without XDG_RUNTIME_DIR the admin socket is in
// $TMPDIR/mailguard-UID. When another user made that directory first (and
// put a socket of theirs in it), neither serve nor the CLI uses it; a
// directory of ours that others may write is refused too; once it is gone,
// serve makes it (0700) and the CLI talks to the daemon.
func TestAdminSocketDirHijack(t *testing.T) {
	testenv.Root(t)
	base, err := os.MkdirTemp("", "mgsockdir")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	tmp, state := filepath.Join(base, "tmp"), filepath.Join(base, "state")
	os.Mkdir(tmp, 0o755)
	os.Chmod(tmp, 0o777|os.ModeSticky) // like /tmp
	os.Mkdir(state, 0o700)
	os.Chown(state, nobodyUID, nobodyUID)
	dir := filepath.Join(tmp, fmt.Sprintf("mailguard-%d", nobodyUID))

	// The other user's directory, world-writable, with their own "daemon"
	// answering a forged status.
	os.Mkdir(dir, 0o777)
	os.Chmod(dir, 0o777)
	os.Chown(dir, hostileUID, hostileUID)
	sock := filepath.Join(dir, "admin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chown(sock, hostileUID, hostileUID)
	os.Chmod(sock, 0o777)
	forged := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `[{"name":"forged","banned":[{"jail":"forged","subject":"net:192.0.2.66/32"}]}]`)
	})}
	go forged.Serve(l)
	defer forged.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ports := []string{
		"--set", fmt.Sprintf("postfix.listen=127.0.0.1:%d", testenv.FreePort(t)),
		"--set", fmt.Sprintf("dovecot.listen=127.0.0.1:%d", testenv.FreePort(t)),
		"--set", fmt.Sprintf("metrics.listen=127.0.0.1:%d", testenv.FreePort(t)),
		"--config", "/dev/null",
	}
	for _, args := range [][]string{{"status"}, {"ban", "192.0.2.1"}, append([]string{"serve"}, ports...)} {
		out, err := asNobody(ctx, t, tmp, state, args...).CombinedOutput()
		if code := exitCode(err); code != 2 || !strings.Contains(string(out), "unsafe admin socket: directory "+dir+fmt.Sprintf(" belongs to uid %d, not to you (uid %d)", hostileUID, nobodyUID)) {
			t.Errorf("mailguard %s in another user's directory: exit %d, %q; want exit 2 and the reason", args[0], code, out)
		}
		if strings.Contains(string(out), "forged") {
			t.Errorf("mailguard %s talked to the other user's socket:\n%s", args[0], out)
		}
	}

	// Our own directory, but writable by others.
	os.Chown(dir, nobodyUID, nobodyUID)
	out, err := asNobody(ctx, t, tmp, state, "status").CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "is writable by other users (mode 0777)") {
		t.Errorf("status in a world-writable directory: exit %d, %q; want exit 2 and the reason", code, out)
	}
	// Our directory, safe, but the socket in it is the other user's.
	os.Chmod(dir, 0o700)
	out, err = asNobody(ctx, t, tmp, state, "status").CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), fmt.Sprintf("belongs to uid %d, neither you", hostileUID)) {
		t.Errorf("status with another user's socket: exit %d, %q; want exit 2 and the reason", code, out)
	}

	// Without the other user's directory, serve makes its own.
	forged.Close()
	os.RemoveAll(dir)
	srv := asNobody(ctx, t, tmp, state, append([]string{"serve"}, ports...)...)
	var log syncBuffer
	srv.Stdout, srv.Stderr = &log, &log
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := asNobody(ctx, t, tmp, state, "status", "dovecot").CombinedOutput()
		if err == nil && strings.Contains(string(out), "Status for the jail: dovecot") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status as nobody against its own daemon: %v, %s\nlog:\n%s", err, out, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != nobodyUID || fi.Mode().Perm() != 0o700 {
		t.Errorf("serve made %s with uid %d mode %v, want uid %d mode 0700", dir, st.Uid, fi.Mode().Perm(), nobodyUID)
	}
}
