// Package redistest starts real redis-server processes for tests: a
// standalone server (optionally persistent, so a test can stall, kill and
// restart it), a replica, one or several Sentinels, and a Redis Cluster of n
// masters. Every process runs on free loopback ports in t.TempDir() and is
// killed in t.Cleanup. A machine without redis-server skips the test, or
// fails it under CI=true (see testenv).
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// startTimeout bounds how long a server may take to answer PING.
const startTimeout = 10 * time.Second

// Config describes a standalone server. The zero value is a throw-away
// server without persistence on a free port.
type Config struct {
	// AppendOnly turns on AOF persistence (appendfsync always), so a killed
	// server restarted on the same Dir keeps every write it acknowledged.
	AppendOnly bool
	// Args are extra redis-server arguments ("--maxmemory", "64mb", ...).
	Args []string
}

// Server is a running (or stopped) redis-server owned by a test. Its methods
// must be called from the test's goroutine.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	cfg  Config

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start starts a throw-away redis-server and returns its address. Tests that
// share it should use distinct key prefixes.
func Start(t testing.TB) string {
	t.Helper()
	return StartServer(t, Config{}).Addr()
}

// StartServer starts a redis-server configured by c.
func StartServer(t testing.TB, c Config) *Server {
	t.Helper()
	s := &Server{
		t:    t,
		bin:  testenv.Command(t, "redis-server"),
		dir:  t.TempDir(),
		port: testenv.FreePort(t),
		cfg:  c,
	}
	t.Cleanup(s.Kill)
	s.Restart()
	return s
}

// StartReplica starts a redis-server configured by c replicating the master
// at masterAddr (--replicaof), and returns once its link to the master is up
// (its first full sync done: start the master with "--repl-diskless-sync-delay
// 0", or that takes the default 5 s).
func StartReplica(t testing.TB, masterAddr string, c Config) *Server {
	t.Helper()
	host, port, err := net.SplitHostPort(masterAddr)
	if err != nil {
		t.Fatalf("redistest: master address %q: %v", masterAddr, err)
	}
	c.Args = append(append([]string(nil), c.Args...), "--replicaof", host, port)
	s := StartServer(t, c)
	deadline := time.Now().Add(startTimeout)
	for {
		info, err := do(s.Addr(), "INFO", "replication")
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s of %s: link not up after %v: %v\n%s\n%s", s.Addr(), masterAddr, startTimeout, err, info, tail(filepath.Join(s.dir, "redis.log")))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Dir is the server's working directory (its AOF and RDB files).
func (s *Server) Dir() string { return s.dir }

// Restart starts the server again on the same port and directory after Kill.
// It fails the test if the server does not answer PING in time.
func (s *Server) Restart() {
	s.t.Helper()
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--dir", s.dir, "--save", "", "--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}
	if s.cfg.AppendOnly {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	args = append(args, s.cfg.Args...)
	cmd := start(s.t, s.bin, s.dir, args)
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	if err := waitPing(s.Addr(), startTimeout); err != nil {
		s.t.Fatalf("redis-server on %s: %v\n%s", s.Addr(), err, tail(filepath.Join(s.dir, "redis.log")))
	}
}

// Kill stops the server with SIGKILL (nothing is flushed that was not
// already) and waits for it. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a paused process must run to die promptly
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// Pause freezes the server (SIGSTOP): connections stay open but nothing is
// answered, like a stalled or overloaded Redis.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume undoes Pause.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(sig)
	}
}

// StartCluster starts a Redis Cluster of n masters (n ≥ 3, no replicas) and
// returns their addresses once cluster_state is ok on every node.
func StartCluster(t testing.TB, n int) []string {
	t.Helper()
	if n < 3 {
		t.Fatalf("redistest: a cluster needs at least 3 masters, not %d", n)
	}
	bin := testenv.Command(t, "redis-server")
	cli := testenv.Command(t, "redis-cli")
	addrs := make([]string, n)
	for i := range addrs {
		dir := t.TempDir()
		port, bus := testenv.FreePort(t), testenv.FreePort(t)
		for tries := 0; bus == port && tries < 10; tries++ {
			bus = testenv.FreePort(t)
		}
		addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		cmd := start(t, bin, dir, []string{
			"--port", strconv.Itoa(port), "--cluster-port", strconv.Itoa(bus),
			"--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no",
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000", "--daemonize", "no",
			"--logfile", filepath.Join(dir, "redis.log"),
		})
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		if err := waitPing(addrs[i], startTimeout); err != nil {
			t.Fatalf("cluster node %s: %v\n%s", addrs[i], err, tail(filepath.Join(dir, "redis.log")))
		}
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(startTimeout)
	for _, a := range addrs {
		for {
			info, err := do(a, "CLUSTER", "INFO")
			if err == nil && strings.Contains(info, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster node %s not ok after %v: %v\n%s", a, startTimeout, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return addrs
}

// StartSentinel starts a Redis Sentinel monitoring the master at
// masterAddr under masterName, and returns the Sentinel's address once it
// knows the master.
func StartSentinel(t testing.TB, masterName, masterAddr string) string {
	t.Helper()
	return startSentinel(t, masterName, masterAddr, 1, "")
}

// SentinelConfig tunes StartSentinels. A zero Quorum is 1; zero durations
// keep Sentinel's defaults (30 s down-after, 3 min failover-timeout).
type SentinelConfig struct {
	// Quorum is how many Sentinels must agree that the master is down.
	Quorum int
	// DownAfter is down-after-milliseconds; FailoverTimeout is
	// failover-timeout.
	DownAfter, FailoverTimeout time.Duration
	// Replicas: StartSentinels returns once every Sentinel knows this many
	// replicas of the master (and all the other Sentinels), so that a
	// failover can start at once.
	Replicas int
}

// StartSentinels starts n Sentinels monitoring the master at masterAddr
// under masterName and returns their addresses once each knows the master,
// c.Replicas replicas and the n-1 other Sentinels.
func StartSentinels(t testing.TB, masterName, masterAddr string, n int, c SentinelConfig) []string {
	t.Helper()
	quorum := max(c.Quorum, 1)
	var extra strings.Builder
	fmt.Fprintf(&extra, "sentinel resolve-hostnames no\n")
	if c.DownAfter > 0 {
		fmt.Fprintf(&extra, "sentinel down-after-milliseconds %s %d\n", masterName, c.DownAfter.Milliseconds())
	}
	if c.FailoverTimeout > 0 {
		fmt.Fprintf(&extra, "sentinel failover-timeout %s %d\n", masterName, c.FailoverTimeout.Milliseconds())
	}
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = startSentinel(t, masterName, masterAddr, quorum, extra.String())
	}
	// Sentinels find the replicas in the master's INFO and each other
	// through its __sentinel__:hello channel (every 2 s).
	want := fmt.Sprintf("slaves=%d,sentinels=%d", c.Replicas, n)
	deadline := time.Now().Add(startTimeout)
	for _, a := range addrs {
		for {
			info, err := do(a, "INFO", "sentinel")
			if err == nil && strings.Contains(info, "name="+masterName+",status=ok,") && strings.Contains(info, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sentinel on %s does not see %s after %v: %v\n%s", a, want, startTimeout, err, info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return addrs
}

// startSentinel starts one Sentinel; extra is more sentinel.conf lines for
// the master (after its "sentinel monitor").
func startSentinel(t testing.TB, masterName, masterAddr string, quorum int, extra string) string {
	t.Helper()
	bin := testenv.Command(t, "redis-server")
	dir := t.TempDir()
	port := testenv.FreePort(t)
	host, mport, err := net.SplitHostPort(masterAddr)
	if err != nil {
		t.Fatalf("redistest: master address %q: %v", masterAddr, err)
	}
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\nsentinel monitor %s %s %s %d\n%s",
		port, dir, filepath.Join(dir, "sentinel.log"), masterName, host, mport, quorum, extra)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := start(t, bin, dir, []string{conf, "--sentinel"})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("sentinel %s log:\n%s", addr, tail(filepath.Join(dir, "sentinel.log")))
		}
	})
	deadline := time.Now().Add(startTimeout)
	for {
		r, err := do(addr, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", masterName)
		if err == nil && r != "" {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("sentinel on %s: %v\n%s", addr, err, tail(filepath.Join(dir, "sentinel.log")))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func start(t testing.TB, bin, dir string, args []string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	return cmd
}

// waitPing polls addr with PING until it answers PONG or timeout passes.
func waitPing(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		r, err := do(addr, "PING")
		if err == nil && r == "PONG" || err != nil && strings.Contains(err.Error(), "NOAUTH") {
			return nil // up (with a password, it answers NOAUTH)
		}
		if err == nil {
			err = fmt.Errorf("PING answered %q", r)
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// do sends one command in RESP and returns its reply as a string. It is
// enough for PING, CLUSTER INFO and SENTINEL; tests use go-redis for the rest.
func do(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(c), 0)
}

// readReply reads a simple string, an error, a bulk string or an array of
// those (its elements joined by spaces; nil is "").
func readReply(r *bufio.Reader, depth int) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "*") && depth == 0:
		n, err := strconv.Atoi(line[1:])
		if err != nil || n > 64 {
			return "", fmt.Errorf("redis: bad array length %q", line)
		}
		var elems []string
		for range max(n, 0) {
			e, err := readReply(r, depth+1)
			if err != nil {
				return "", err
			}
			elems = append(elems, e)
		}
		return strings.Join(elems, " "), nil
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "-"):
		return "", fmt.Errorf("redis: %s", line[1:])
	case line == "$-1":
		return "", nil
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 || n > 1<<20 {
			return "", fmt.Errorf("redis: bad bulk length %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redis: unexpected reply %q", line)
}

// tail returns the end of a log file for failure messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
