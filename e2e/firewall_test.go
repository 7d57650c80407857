package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/netnstest"
	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// The firewall tests run the daemon in a server network namespace joined to a
// client namespace by a veth pair, feed it Dovecot failure reports, and check
// what the client's new connections meet in the server's kernel:
//
//	client  10.201.0.2/24 10.201.0.3/24  fd00:201::2/64 fd00:201::3/64
//	server  10.201.0.1/24  fd00:201::1/64  mailguard (listeners on its 127.0.0.1),
//	        TCP listeners on 993 (imaps, in the dovecot jail's ports) and 8080
//
// 10.201.0.3 is in ignoreip.
var (
	fwCli4     = netip.MustParseAddr("10.201.0.2")
	fwIgnored4 = netip.MustParseAddr("10.201.0.3")
	fwCli6a    = netip.MustParseAddr("fd00:201::2")
	fwCli6b    = netip.MustParseAddr("fd00:201::3")
)

const (
	fwIMAPS = 993  // in the dovecot jail's ports
	fwOther = 8080 // in no jail's ports
	// fwDropped is how long a connection attempt waits before it counts as
	// dropped; an allowed handshake on the veth takes well under a millisecond.
	fwDropped = 500 * time.Millisecond
	// fwWithin bounds every wait for the daemon to change the kernel: events
	// apply in milliseconds, reconcile runs every second.
	fwWithin = 15 * time.Second
)

// fwNet is the pair of namespaces of one test.
type fwNet struct {
	*netnstest.Net
	http *http.Client // dials from the server namespace: the daemon's dovecot.listen
}

// newFWNet builds the namespaces and removes them when the test ends,
// whatever happens.
func newFWNet(t *testing.T) *fwNet {
	t.Helper()
	n := &fwNet{Net: netnstest.New(t, netnstest.Config{
		Name:        "mge2e",
		Server:      []netip.Prefix{netip.MustParsePrefix("10.201.0.1/24"), netip.MustParsePrefix("fd00:201::1/64")},
		Client:      []netip.Prefix{netip.PrefixFrom(fwCli4, 24), netip.PrefixFrom(fwIgnored4, 24), netip.PrefixFrom(fwCli6a, 64), netip.PrefixFrom(fwCli6b, 64)},
		Ports:       []int{fwIMAPS, fwOther},
		Ready:       10 * time.Second,
		OpenTimeout: 5 * time.Second,
		DropTimeout: fwDropped,
		PollTimeout: fwDropped,
	})}
	srv := netnstest.Enter(t, n.Server)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return srv.DialContext(ctx, &net.Dialer{}, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	n.http = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	return n
}

// daemon starts mailguard in the server namespace with the backend,
// reconcile every second (unless sets name another interval), the dovecot
// jail banning at the 3rd failure, and 10.201.0.3 in ignoreip; sets are more
// --set overrides.
func (n *fwNet) daemon(t *testing.T, backend string, sets ...string) *Daemon {
	t.Helper()
	d := n.newDaemon(t, backend, sets...)
	d.Start()
	return d
}

func (n *fwNet) newDaemon(t *testing.T, backend string, sets ...string) *Daemon {
	t.Helper()
	switch backend {
	case "nftables":
		// nf_tables in the kernel, and nft for the checks by hand.
		if out, err := n.Exec(testenv.Command(t, "nft"), "list", "tables"); err != nil {
			testenv.Missing(t, fmt.Sprintf("nft list tables: %v: %s", err, out))
		}
	case "iptables":
		testenv.Command(t, "iptables")
		testenv.Command(t, "ip6tables")
		testenv.Command(t, "ipset")
	}
	base := []string{"firewall.backend=" + backend, "jails.dovecot.maxretry=3", "ignoreip=127.0.0.1,::1," + fwIgnored4.String()}
	if !slices.ContainsFunc(sets, func(s string) bool { return strings.HasPrefix(s, "firewall.reconcile_interval=") }) {
		base = append(base, "firewall.reconcile_interval=1s")
	}
	d := NewDaemon(t, append(base, sets...)...)
	d.NetNS = n.Server
	return d
}

// report sends what Dovecot's auth policy posts after a failed login from
// remote to the daemon's dovecot.listen, and returns when the answer is read.
func (n *fwNet) report(t *testing.T, d *Daemon, remote netip.Addr, login string) {
	t.Helper()
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	body, _ := json.Marshal(map[string]any{
		"device_id": "", "login": login, "protocol": "imap", "pwhash": "03a1",
		"remote": remote.String(), "session_id": hex.EncodeToString(rnd[:]),
		"success": false, "policy_reject": false, "tls": false,
	})
	resp, err := dovecotPost(n.http, d.Dovecot, "report", body)
	if err != nil {
		t.Fatalf("report to %s: %v", d.Dovecot, err)
	}
	got, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("report to %s = %d %q, want 200", d.Dovecot, resp.StatusCode, got)
	}
}

// fail reports the dovecot jail's maxretry (3) failed logins from remote.
func (n *fwNet) fail(t *testing.T, d *Daemon, remote netip.Addr) {
	t.Helper()
	for range 3 {
		n.report(t, d, remote, "alice@example.org")
	}
}

// firewallList runs `mailguard firewall list` in the server namespace.
func firewallList(t *testing.T, d *Daemon, backend string) string {
	t.Helper()
	return d.MustCLI("firewall", "list", "--backend", backend)
}

// A Dovecot client that reaches maxretry is dropped by the kernel on the
// jail's ports only; unban lifts it, and a short ban runs out by itself.
func TestFirewallBanByFailures(t *testing.T) {
	n := newFWNet(t)
	d := n.daemon(t, "nftables")
	n.WantOpen(t, fwCli4, fwIMAPS)

	n.report(t, d, fwCli4, "alice@example.org")
	n.report(t, d, fwCli4, "alice@example.org")
	n.WantOpen(t, fwCli4, fwIMAPS) // two failures: not yet
	n.report(t, d, fwCli4, "alice@example.org")
	n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)
	n.WantOpen(t, fwCli4, fwOther)
	n.WantOpen(t, fwCli6a, fwIMAPS)
	if out := firewallList(t, d, "nftables"); !strings.Contains(out, "10.201.0.2/32") || !strings.Contains(out, "993") {
		t.Errorf("firewall list lacks 10.201.0.2/32 on 993:\n%s", out)
	}

	d.MustCLI("unban", fwCli4.String())
	n.WaitOpen(t, fwCli4, fwIMAPS, fwWithin)
	n.WantOpen(t, fwCli4, fwOther)

	// A short ban runs out in the kernel (and the store) by itself.
	start := time.Now()
	d.MustCLI("ban", fwCli4.String(), "--jail", "dovecot", "--for", "3s")
	n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)
	n.WaitOpen(t, fwCli4, fwIMAPS, 20*time.Second)
	lasted := time.Since(start)
	t.Logf("a 3s ban: open again %v after the ban command started", lasted.Round(time.Millisecond))
	if lasted < 2900*time.Millisecond {
		t.Errorf("a 3s ban was lifted after %v", lasted)
	}
	// Still open after a few reconciles: nothing puts an expired ban back.
	time.Sleep(2 * time.Second)
	n.WantOpen(t, fwCli4, fwIMAPS)
}

// Failures from one IPv6 address ban its /64: every address in it is dropped.
func TestFirewallIPv6Prefix(t *testing.T) {
	n := newFWNet(t)
	d := n.daemon(t, "nftables")
	n.fail(t, d, fwCli6a)
	n.WaitDropped(t, fwCli6a, fwIMAPS, fwWithin)
	n.WantDropped(t, fwCli6b, fwIMAPS)
	n.WantOpen(t, fwCli6b, fwOther)
	n.WantOpen(t, fwCli4, fwIMAPS)
	if out := firewallList(t, d, "nftables"); !strings.Contains(out, "fd00:201::/64") {
		t.Errorf("firewall list lacks fd00:201::/64:\n%s", out)
	}
	d.MustCLI("unban", "fd00:201::/64")
	n.WaitOpen(t, fwCli6a, fwIMAPS, fwWithin)
	n.WantOpen(t, fwCli6b, fwIMAPS)
}

// The same through iptables and ipsets.
func TestFirewallIPTables(t *testing.T) {
	n := newFWNet(t)
	d := n.daemon(t, "iptables")
	n.fail(t, d, fwCli4)
	n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)
	n.WantOpen(t, fwCli4, fwOther)
	n.fail(t, d, fwCli6a)
	n.WaitDropped(t, fwCli6b, fwIMAPS, fwWithin)
	n.WantOpen(t, fwCli6b, fwOther)

	rules := n.MustExec(t, "iptables", "-S", "MAILGUARD")
	sets := n.MustExec(t, "ipset", "list", "-n")
	if !strings.Contains(rules, "match-set mailguard4-") || !strings.Contains(sets, "mailguard6-") {
		t.Errorf("rules\n%s\nsets\n%s", rules, sets)
	}
	if out := firewallList(t, d, "iptables"); !strings.Contains(out, "10.201.0.2/32") || !strings.Contains(out, "fd00:201::/64") {
		t.Errorf("firewall list:\n%s", out)
	}

	d.MustCLI("unban", fwCli4.String())
	d.MustCLI("unban", "fd00:201::/64")
	n.WaitOpen(t, fwCli4, fwIMAPS, fwWithin)
	n.WaitOpen(t, fwCli6a, fwIMAPS, fwWithin)
}

// Without the ipset program the iptables backend does not start, and says
// what to install.
func TestFirewallIPTablesNeedsIPSet(t *testing.T) {
	n := newFWNet(t)
	d := n.newDaemon(t, "iptables")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"serve", "--config", d.Config}
	for _, s := range d.sets {
		args = append(args, "--set", s)
	}
	cmd := d.command(ctx, args...)
	cmd.Env = append(os.Environ(), "PATH="+iptablesOnlyPath(t))
	out, err := cmd.CombinedOutput()
	if exitCode(err) == 0 || !strings.Contains(string(out), "install ipset (apt install ipset)") {
		t.Errorf("serve without ipset = %v, want a start error naming the package:\n%s", err, out)
	}
	if rules := n.MustExec(t, "iptables", "-S"); strings.Contains(rules, "MAILGUARD") {
		t.Errorf("a failed start left a chain behind:\n%s", rules)
	}
}

// iptablesOnlyPath returns a directory holding the iptables programs and
// nothing else, for a PATH on which ipset is not found.
func iptablesOnlyPath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, p := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		if err := os.Symlink(testenv.Command(t, p), filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Bans stay in the kernel while the daemon is down (SIGKILL), and a new
// daemon keeps them.
func TestFirewallRestartKeepsKernelBans(t *testing.T) {
	n := newFWNet(t)
	d := n.daemon(t, "nftables")
	n.fail(t, d, fwCli4)
	n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)

	d.Kill()
	n.WantDropped(t, fwCli4, fwIMAPS)
	n.WantOpen(t, fwCli4, fwOther)
	if out := firewallList(t, d, "nftables"); !strings.Contains(out, "10.201.0.2/32") {
		t.Errorf("firewall list with the daemon down lacks 10.201.0.2/32:\n%s", out)
	}

	d.Start()
	// Across a few reconciles: the start's Sync keeps it.
	for range 3 {
		n.WantDropped(t, fwCli4, fwIMAPS)
		time.Sleep(500 * time.Millisecond)
	}
	if out := firewallList(t, d, "nftables"); !strings.Contains(out, "10.201.0.2/32") || !strings.Contains(out, "1 bans") {
		t.Errorf("firewall list after restart:\n%s", out)
	}
	n.WantOpen(t, fwCli6a, fwIMAPS)
}

// Parts of the layout deleted by hand are restored by the next reconcile:
// for nftables a set's elements and the whole table, for iptables the INPUT
// jump, the chain and an ipset.
func TestFirewallReconcileRepairs(t *testing.T) {
	ourSet := func(t *testing.T, n *fwNet, fam string) string {
		for _, name := range strings.Fields(n.MustExec(t, "ipset", "list", "-n")) {
			if strings.HasPrefix(name, "mailguard"+fam+"-") {
				return name
			}
		}
		t.Fatalf("no mailguard%s- ipset", fam)
		return ""
	}
	jump := []string{"INPUT", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "mailguard", "-j", "MAILGUARD"}
	type breakage struct {
		name    string
		breakIt func(t *testing.T, n *fwNet)
	}
	for _, tc := range []struct {
		backend   string
		breakages []breakage
	}{
		{"nftables", []breakage{
			{"set flushed", func(t *testing.T, n *fwNet) {
				n.MustExec(t, "nft", "flush", "set", "inet", "mailguard", nftSetOf(t, n, "10.201.0.2"))
			}},
			{"table deleted", func(t *testing.T, n *fwNet) {
				n.MustExec(t, "nft", "delete", "table", "inet", "mailguard")
			}},
		}},
		{"iptables", []breakage{
			{"jump deleted", func(t *testing.T, n *fwNet) {
				n.MustExec(t, append([]string{"iptables", "-D"}, jump...)...)
			}},
			{"chain deleted", func(t *testing.T, n *fwNet) {
				n.MustExec(t, append([]string{"iptables", "-D"}, jump...)...)
				n.MustExec(t, "iptables", "-F", "MAILGUARD")
				n.MustExec(t, "iptables", "-X", "MAILGUARD")
			}},
			{"ipset destroyed", func(t *testing.T, n *fwNet) {
				set := ourSet(t, n, "4")
				n.MustExec(t, "iptables", "-F", "MAILGUARD") // a set in use cannot be destroyed
				n.MustExec(t, "ipset", "destroy", set)
			}},
		}},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			n := newFWNet(t)
			d := n.daemon(t, tc.backend)
			n.fail(t, d, fwCli4)
			n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)
			for _, br := range tc.breakages {
				br.breakIt(t, n)
				// Whether the change is seen before the reconcile puts
				// it back is a race we do not bet on; the ban must be in
				// force again.
				took := n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)
				t.Logf("%s %s: dropped again %v after the change", tc.backend, br.name, took.Round(time.Millisecond))
				// In force for good, not by luck of timing: across reconciles.
				for range 2 {
					time.Sleep(time.Second)
					n.WantDropped(t, fwCli4, fwIMAPS)
				}
				n.WantOpen(t, fwCli4, fwOther)
				if out := firewallList(t, d, tc.backend); !strings.Contains(out, "10.201.0.2/32") || !strings.Contains(out, "1 bans") {
					t.Errorf("%s: firewall list after the repair:\n%s", br.name, out)
				}
			}
		})
	}
}

// eventWithin bounds how long a ban or an unban takes from the store to the
// kernel through store events, with the reconcile a minute away: events
// apply in milliseconds, so this only tells the event path from the
// reconcile.
const eventWithin = 2 * time.Second

// With firewall.reconcile_interval at its default of a minute, bans and
// unbans reach the kernel through store events alone.
func TestFirewallEventPath(t *testing.T) {
	for _, backend := range []string{"nftables", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			n := newFWNet(t)
			d := n.daemon(t, backend, "firewall.reconcile_interval=1m")
			n.fail(t, d, fwCli4)
			took := n.WaitDropped(t, fwCli4, fwIMAPS, eventWithin)
			t.Logf("%s: ban by failures in the kernel after %v", backend, took.Round(time.Millisecond))
			d.MustCLI("unban", fwCli4.String())
			n.WaitOpen(t, fwCli4, fwIMAPS, eventWithin)
			d.MustCLI("ban", "fd00:201::/64", "--jail", "dovecot")
			n.WaitDropped(t, fwCli6b, fwIMAPS, eventWithin)
			d.MustCLI("unban", "fd00:201::/64")
			n.WaitOpen(t, fwCli6a, fwIMAPS, eventWithin)
			// The proof that events, not a reconcile, did it: one sync
			// only, at start.
			log := d.Log()
			if got := strings.Count(log, "firewall synced"); got != 1 {
				t.Errorf("%d reconciles logged, want only the one at start", got)
			}
			if !strings.Contains(log, `msg="firewall add"`) || !strings.Contains(log, `msg="firewall remove"`) {
				t.Errorf("no event applied to the firewall in the log")
			}
		})
	}
}

// Two nodes on one Redis, each in its own network namespace with its own
// kernel firewall (one nftables, one iptables): a ban and an unban made on
// either node reach the other node's kernel through store events, the
// reconcile a minute away. Redis listens on a unix socket, which both
// namespaces reach through the filesystem.
func TestFirewallTwoNodes(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "redis.sock")
	redistest.StartServer(t, redistest.Config{Args: []string{"--unixsocket", sock, "--unixsocketperm", "700"}})
	sets := []string{"store.backend=redis", "store.redis.url=unix://" + sock, "store.redis.prefix=" + redisPrefix(),
		"store.timeout=2s", "firewall.reconcile_interval=1m"}
	na, nb := newFWNet(t), newFWNet(t)
	a := na.daemon(t, "nftables", sets...)
	b := nb.daemon(t, "iptables", sets...)

	// Failures reported to A ban the client on A and on B.
	na.fail(t, a, fwCli4)
	took := nb.WaitDropped(t, fwCli4, fwIMAPS, eventWithin)
	t.Logf("a ban on node A in node B's kernel after %v", took.Round(time.Millisecond))
	na.WaitDropped(t, fwCli4, fwIMAPS, eventWithin)
	nb.WantOpen(t, fwCli4, fwOther)
	// Unbanned on A: lifted in B's kernel.
	a.MustCLI("unban", fwCli4.String())
	nb.WaitOpen(t, fwCli4, fwIMAPS, eventWithin)
	na.WaitOpen(t, fwCli4, fwIMAPS, eventWithin)
	// And the other way round, a manual ban of a /64 on B.
	b.MustCLI("ban", "fd00:201::/64", "--jail", "dovecot")
	na.WaitDropped(t, fwCli6a, fwIMAPS, eventWithin)
	b.MustCLI("unban", "fd00:201::/64")
	na.WaitOpen(t, fwCli6a, fwIMAPS, eventWithin)
	for _, d := range []*Daemon{a, b} {
		if got := strings.Count(d.Log(), "firewall synced"); got != 1 {
			t.Errorf("%d reconciles logged, want only the one at start", got)
		}
	}
}

// nftSetOf returns the name of mailguard's set holding elem.
func nftSetOf(t *testing.T, n *fwNet, elem string) string {
	t.Helper()
	var sets struct {
		Nftables []struct {
			Set *struct {
				Family, Table, Name string
				Elem                []any `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	out := n.MustExec(t, "nft", "-j", "list", "sets", "inet")
	if err := json.Unmarshal([]byte(out), &sets); err != nil {
		t.Fatalf("nft -j list sets: %v\n%s", err, out)
	}
	for _, s := range sets.Nftables {
		if s.Set == nil || s.Set.Table != "mailguard" {
			continue
		}
		if strings.Contains(n.MustExec(t, "nft", "list", "set", "inet", "mailguard", s.Set.Name), elem) {
			return s.Set.Name
		}
	}
	t.Fatalf("no set of table inet mailguard holds %s:\n%s", elem, out)
	return ""
}

// A manual ban of an ignoreip address is refused, and failures from it ban
// nothing: nothing reaches the kernel.
func TestFirewallIgnoreIP(t *testing.T) {
	n := newFWNet(t)
	d := n.daemon(t, "nftables")
	out, err := d.CLI("ban", fwIgnored4.String())
	if err == nil || !strings.Contains(out, "ignoreip") {
		t.Errorf("ban %s = %v %q, want refused naming ignoreip", fwIgnored4, err, out)
	}
	for range 6 {
		n.report(t, d, fwIgnored4, "alice@example.org")
	}
	// The control: a banned client, so we know the kernel has been written
	// since the refusals.
	n.fail(t, d, fwCli4)
	n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)
	n.WantOpen(t, fwIgnored4, fwIMAPS)
	out = firewallList(t, d, "nftables")
	if strings.Contains(out, "10.201.0.3") || !strings.Contains(out, "1 bans") {
		t.Errorf("firewall list holds an ignoreip address, or not just the one ban:\n%s", out)
	}
	if strings.Contains(d.MustCLI("status"), "10.201.0.3") {
		t.Errorf("status shows a ban on an ignoreip address")
	}
}

// `mailguard firewall flush` removes the table and nothing else; the next
// daemon puts its bans back.
func TestFirewallFlush(t *testing.T) {
	n := newFWNet(t)
	// Someone else's table in the same family: flush must leave it.
	n.MustExec(t, "nft", "add", "table", "inet", "other")
	d := n.daemon(t, "nftables")
	n.fail(t, d, fwCli4)
	n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)

	d.Stop() // a running daemon would put its table back at its next reconcile
	n.WantDropped(t, fwCli4, fwIMAPS)
	d.MustCLI("firewall", "flush", "--backend", "nftables")
	tables := n.MustExec(t, "nft", "list", "tables")
	if strings.Contains(tables, "mailguard") || !strings.Contains(tables, "inet other") {
		t.Errorf("after firewall flush, tables:\n%s", tables)
	}
	n.WantOpen(t, fwCli4, fwIMAPS)
	if out := firewallList(t, d, "nftables"); !strings.Contains(out, "0 bans") {
		t.Errorf("firewall list after flush:\n%s", out)
	}
	if tables := n.MustExec(t, "nft", "list", "tables"); strings.Contains(tables, "mailguard") {
		t.Errorf("firewall list created the table:\n%s", tables)
	}

	d.Start()
	n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)
}
