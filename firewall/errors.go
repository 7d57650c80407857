package firewall

import (
	"errors"
	"fmt"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

// Hints appended to start errors, so that the log line says what to do.
const (
	hintPermission = "run as root or give CAP_NET_ADMIN (AmbientCapabilities=CAP_NET_ADMIN in the unit)"
	hintNoNFTables = "the kernel has no nf_tables: load it (modprobe nf_tables) or set firewall.backend: iptables"
	hintNoIPTables = "install iptables (apt install iptables) or set firewall.backend: nftables"
	hintNoIPSet    = "the iptables backend keeps bans in ipsets: install ipset (apt install ipset) or set firewall.backend: nftables"
)

// ErrClosed is returned by a Backend's methods after its Close.
var ErrClosed = errors.New("firewall: backend closed")

// explain wraps err with the cause's fix when it is one the administrator
// can act on. It branches on errnos only: the text of netlink and exec
// errors is not stable.
func explain(backend string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: %w: %s", backend, err, hintPermission)
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("%s: %w: %s", backend, err, hintNoNFTables)
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, os.ErrNotExist) && backend == NameIPTables:
		return fmt.Errorf("%s: %w: %s", backend, err, hintNoIPTables)
	}
	return fmt.Errorf("%s: %w", backend, err)
}

// errNoNetAdmin says the process lacks CAP_NET_ADMIN; it wraps EPERM so that
// explain and callers recognise it.
var errNoNetAdmin = fmt.Errorf("no CAP_NET_ADMIN: %w", unix.EPERM)

// hasNetAdmin reports whether the calling thread has CAP_NET_ADMIN in its
// effective set. The iptables programs only report a missing capability in
// their message text, so the iptables backend asks the kernel first.
func hasNetAdmin() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return os.Geteuid() == 0
	}
	return data[unix.CAP_NET_ADMIN/32].Effective&(1<<(unix.CAP_NET_ADMIN%32)) != 0
}
