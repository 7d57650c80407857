package admin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Directories of our own that nobody else may write pass; one others may
// write does not, unless it is root's and sticky like /tmp. (Another
// user's directory needs root to make: see e2e TestAdminSocketDirHijack.)
func TestCheckDir(t *testing.T) {
	base := t.TempDir()
	for _, tc := range []struct {
		name string
		mode os.FileMode
		want string // "" for no error
	}{
		{"0700", 0o700, ""},
		{"0755", 0o755, ""},
		{"group writable", 0o770, "writable by other users (mode 0770)"},
		{"world writable", 0o777, "writable by other users (mode 0777)"},
	} {
		dir := filepath.Join(base, tc.name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, tc.mode)
		err := checkDir(dir)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: checkDir = %v, want nil", tc.name, err)
		case tc.want != "" && (!errors.Is(err, ErrUnsafeSocket) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: checkDir = %v, want ErrUnsafeSocket saying %q", tc.name, err, tc.want)
		}
	}
	if os.Geteuid() != 0 {
		return
	}
	sticky := filepath.Join(base, "sticky")
	os.Mkdir(sticky, 0o700)
	os.Chmod(sticky, 0o777|os.ModeSticky)
	if err := checkDir(sticky); err != nil {
		t.Errorf("root's sticky directory (like /tmp): checkDir = %v, want nil", err)
	}
}
