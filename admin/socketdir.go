package admin

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// ErrUnsafeSocket marks an admin socket another user could have put in
// place (or could replace): its directory or the socket belongs to someone
// else, or others may write the directory.
var ErrUnsafeSocket = errors.New("unsafe admin socket")

// checkDir makes sure that no other user can put a socket in dir, as
// ssh-agent and tmux do for theirs: dir (and the symlink naming it, if any)
// must belong to us or root, and others must not be able to write it,
// unless it is a sticky directory of root's such as /tmp, where nobody can
// remove or rename a file they do not own.
func checkDir(dir string) error {
	uid := os.Geteuid()
	if fi, err := os.Lstat(dir); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if o := owner(fi); o != uid && o != 0 {
			return fmt.Errorf("%w: %s is a symlink of uid %d, not yours (uid %d): another user could point it elsewhere; remove it, or name another socket with --socket or MAILGUARD_ADMIN_SOCKET (or set XDG_RUNTIME_DIR)", ErrUnsafeSocket, dir, o, uid)
		}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("admin socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("admin socket directory %s is not a directory", dir)
	}
	o := owner(fi)
	if o != uid && o != 0 {
		return fmt.Errorf("%w: directory %s belongs to uid %d, not to you (uid %d): another user could put their own socket there; remove it (as root or its owner), or name another socket with --socket or MAILGUARD_ADMIN_SOCKET (or set XDG_RUNTIME_DIR)", ErrUnsafeSocket, dir, o, uid)
	}
	sticky := fi.Mode()&fs.ModeSticky != 0 && o == 0
	if m := fi.Mode().Perm(); m&0o022 != 0 && !sticky {
		return fmt.Errorf("%w: directory %s is writable by other users (mode %04o): they could put their own socket there; chmod 700 %s", ErrUnsafeSocket, dir, m, dir)
	}
	return nil
}

// checkSocket is checkDir for the socket's directory, and, the socket being
// there, that it belongs to us or root (the daemon that made it).
func checkSocket(path string) error {
	if _, err := os.Stat(filepath.Dir(path)); errors.Is(err, fs.ErrNotExist) {
		return nil // no daemon made it: dialing says so
	}
	if err := checkDir(filepath.Dir(path)); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil // nothing to trust or distrust: dialing says no daemon
	}
	if o, uid := owner(fi), os.Geteuid(); o != uid && o != 0 {
		return fmt.Errorf("%w: %s belongs to uid %d, neither you (uid %d) nor root: it is not your daemon's", ErrUnsafeSocket, path, o, uid)
	}
	return nil
}

func owner(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
