package main

import (
	"log/slog"
	"syscall"

	"github.com/mailguard/mailguard/admin"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/metrics"
)

// fdReserve is what the daemon needs besides its capped connections:
// listeners, the state files, the Redis pool, the netlink socket, the
// runtime's own.
const fdReserve = 128

// fdNeed is how many file descriptors the daemon may hold at once: every
// connection cap of c plus fdReserve.
func fdNeed(c config.Config) uint64 {
	n := c.Postfix.MaxConns + c.Dovecot.MaxConns + admin.DefaultMaxConns + fdReserve
	if c.Metrics.Listen != "" {
		n += metrics.DefaultMaxConns
	}
	if c.API.TokensFile != "" {
		n += c.API.MaxConns
	}
	if c.Store.Backend == "redis" {
		n += max(c.Store.Redis.PoolSize, 0)
	}
	return uint64(max(n, 0))
}

// checkNoFile makes RLIMIT_NOFILE fit fdNeed when it can and warns when it
// cannot. Go has already raised the soft limit to the hard one at start
// (os package, Go 1.19+); as root we may raise the hard one too. Below the
// need, a flood of connections would make accept fail with "too many open
// files" on every listener at once.
func checkNoFile(c config.Config, log *slog.Logger) {
	need := fdNeed(c)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the open file limit", "error", err)
		return
	}
	if lim.Cur >= need {
		return
	}
	want := syscall.Rlimit{Cur: need, Max: max(lim.Max, need)} // a hard limit above lim.Max needs root
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil && lim.Max > lim.Cur {
		want = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur >= need {
		log.Info("raised the open file limit", "limit", lim.Cur, "need", need)
		return
	}
	log.Warn("the open file limit is below what the connection caps may use: under a flood of connections accepting would fail (EMFILE) on every listener; raise LimitNOFILE= in the unit (or ulimit -n) or lower postfix.max_conns and dovecot.max_conns",
		"limit", lim.Cur, "need", need)
}
