package e2e

import (
	"bytes"
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
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/netnstest"
	"github.com/mailguard/mailguard/internal/testenv"
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
// reconcile every second, the dovecot jail banning at the 3rd failure, and
// 10.201.0.3 in ignoreip; sets are more --set overrides.
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
	}
	d := NewDaemon(t, append([]string{
		"firewall.backend=" + backend, "firewall.reconcile_interval=1s",
		"jails.dovecot.maxretry=3", "ignoreip=127.0.0.1,::1," + fwIgnored4.String(),
	}, sets...)...)
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
	resp, err := n.http.Post("http://"+d.Dovecot+"/?command=report", "application/json", bytes.NewReader(body))
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

// The same through iptables: with ipset, and with one rule per ban on a host
// without the ipset program (the daemon runs with a PATH that has the
// iptables programs only; there is no setting for it).
func TestFirewallIPTables(t *testing.T) {
	for _, withIPSet := range []bool{true, false} {
		name := "ipset"
		if !withIPSet {
			name = "rules"
		}
		t.Run(name, func(t *testing.T) {
			n := newFWNet(t)
			d := n.newDaemon(t, "iptables")
			if withIPSet {
				testenv.Command(t, "ipset")
			} else {
				d.Env = []string{"PATH=" + iptablesOnlyPath(t)}
			}
			d.Start()
			n.fail(t, d, fwCli4)
			n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)
			n.WantOpen(t, fwCli4, fwOther)
			n.fail(t, d, fwCli6a)
			n.WaitDropped(t, fwCli6b, fwIMAPS, fwWithin)
			n.WantOpen(t, fwCli6b, fwOther)

			rules := n.MustExec(t, "iptables", "-S", "MAILGUARD")
			sets, _ := n.Exec("ipset", "list", "-n")
			if withIPSet {
				if !strings.Contains(rules, "match-set mailguard4-") || !strings.Contains(sets, "mailguard6-") {
					t.Errorf("ipset mode: rules\n%s\nsets\n%s", rules, sets)
				}
			} else {
				if !strings.Contains(rules, "10.201.0.2/32") || strings.Contains(sets, "mailguard") {
					t.Errorf("rule-per-ban mode: rules\n%s\nsets\n%s", rules, sets)
				}
				if !strings.Contains(d.Log(), "one rule per ban (no ipset)") {
					t.Errorf("daemon did not say it runs without ipset")
				}
			}

			d.MustCLI("unban", fwCli4.String())
			d.MustCLI("unban", "fd00:201::/64")
			n.WaitOpen(t, fwCli4, fwIMAPS, fwWithin)
			n.WaitOpen(t, fwCli6a, fwIMAPS, fwWithin)
		})
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

// A set flushed by hand is refilled at the next reconcile.
func TestFirewallReconcileRepairs(t *testing.T) {
	n := newFWNet(t)
	d := n.daemon(t, "nftables")
	n.fail(t, d, fwCli4)
	n.WaitDropped(t, fwCli4, fwIMAPS, fwWithin)

	set := nftSetOf(t, n, "10.201.0.2")
	n.MustExec(t, "nft", "flush", "set", "inet", "mailguard", set)
	// Whether the flush is seen before the reconcile puts it back is a race
	// we do not bet on; the set must hold the ban again, and it must work.
	took := time.Now()
	for !strings.Contains(n.MustExec(t, "nft", "list", "set", "inet", "mailguard", set), "10.201.0.2") {
		if time.Since(took) > fwWithin {
			t.Fatalf("set %s still empty after %v", set, fwWithin)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("set %s refilled %v after the flush", set, time.Since(took).Round(time.Millisecond))
	n.WantDropped(t, fwCli4, fwIMAPS)
	n.WantOpen(t, fwCli4, fwOther)
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
