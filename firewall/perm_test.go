package firewall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mailguard/mailguard/internal/testenv"
)

// TestPermissionError runs the constructors as an unprivileged user (a copy
// of this test binary, run as nobody) and checks the errors name the fix.
func TestPermissionError(t *testing.T) {
	if os.Getenv("MAILGUARD_FW_UNPRIVILEGED") == "1" {
		unprivileged()
		return
	}
	testenv.Root(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mailguard-perm-") // t.TempDir's parent is 0700
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "firewall.test")
	copyFile(t, exe, bin)
	cmd := exec.Command(bin, "-test.run=^TestPermissionError$", "-test.v")
	cmd.Env = append(os.Environ(), "MAILGUARD_FW_UNPRIVILEGED=1", "CI=")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged run: %v\n%s", err, out)
	}
	t.Logf("as nobody:\n%s", out)
	for _, want := range []string{
		"nftables err: nftables: netlink: get table: ", hintPermission,
		"iptables err: iptables: no CAP_NET_ADMIN: operation not permitted: " + hintPermission,
		"nftables is EPERM: true", "iptables is EPERM: true",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("unprivileged output lacks %q:\n%s", want, out)
		}
	}
}

func unprivileged() {
	ctx := context.Background()
	_, err := NewNFTables(ctx, Options{})
	fmt.Printf("nftables err: %v\nnftables is EPERM: %v\n", err, errors.Is(err, unix.EPERM))
	_, err = NewIPTables(ctx, Options{})
	fmt.Printf("iptables err: %v\niptables is EPERM: %v\n", err, errors.Is(err, unix.EPERM))
}

func copyFile(t *testing.T, from, to string) {
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
