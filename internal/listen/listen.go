// Package listen opens mailguard's listeners from their config form:
// "host:port" or "inet:host:port" for TCP (as Postfix writes it), and
// "unix:/path" for a unix socket.
package listen

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"
)

// Listen listens on addr. A unix socket gets mode and, when group is not
// empty, exists and we are root, that group (so that Postfix or Dovecot, and
// no other local user, can connect). A stale socket left by a dead process is
// replaced; a live one, or a file that is not a socket, is an error. Closing
// the listener removes the socket.
func Listen(addr string, mode fs.FileMode, group string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		l, err := net.Listen("tcp", strings.TrimPrefix(addr, "inet:"))
		if err != nil {
			return nil, err
		}
		return l, nil
	}
	if path == "" {
		return nil, errors.New("unix: socket path is empty")
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another server is listening there", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket mode: %w", err)
	}
	if group != "" && os.Geteuid() == 0 {
		if g, err := user.LookupGroup(group); err == nil {
			gid, _ := strconv.Atoi(g.Gid)
			if err := os.Chown(path, -1, gid); err != nil {
				l.Close()
				return nil, fmt.Errorf("socket group %s: %w", group, err)
			}
		}
	}
	return l, nil
}
