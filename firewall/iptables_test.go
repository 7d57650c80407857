package firewall

import (
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

func iptHarness(noIPSet bool) harness {
	return harness{
		name: NameIPTables,
		open: func(t *testing.T, n *testNet) Backend {
			testenv.Command(t, "iptables")
			if !noIPSet {
				testenv.Command(t, "ipset")
			}
			b, err := NewIPTables(testCtx(t), Options{NetNS: n.serverPath, NoIPSet: noIPSet, SweepInterval: 500 * time.Millisecond, Log: testLog(t)})
			if err != nil {
				t.Fatalf("NewIPTables: %v", err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
		breakByHand: func(t *testing.T, n *testNet) {
			if noIPSet {
				n.MustExec(t, "iptables", "-F", iptChain)
				n.MustExec(t, "ip6tables", "-F", iptChain)
				return
			}
			for _, name := range strings.Fields(n.MustExec(t, "ipset", "list", "-n")) {
				n.MustExec(t, "ipset", "flush", name)
			}
		},
		dump: func(t *testing.T, n *testNet) string {
			s := n.MustExec(t, "iptables", "-S") + n.MustExec(t, "ip6tables", "-S")
			if !noIPSet {
				s += n.MustExec(t, "ipset", "save")
			}
			return s
		},
		expired: func(t *testing.T, n *testNet) {
			if !noIPSet {
				return
			}
			// The sweeper deletes the rules whose time has passed.
			deadline := time.Now().Add(5 * time.Second)
			for strings.Contains(n.MustExec(t, "iptables", "-S", iptChain)+n.MustExec(t, "ip6tables", "-S", iptChain), "until=") {
				if time.Now().After(deadline) {
					t.Fatalf("expired rules not swept:\n%s", n.MustExec(t, "iptables", "-S", iptChain))
				}
				time.Sleep(100 * time.Millisecond)
			}
		},
		gone: func(t *testing.T, n *testNet) bool {
			s := n.MustExec(t, "iptables", "-S") + n.MustExec(t, "ip6tables", "-S") + n.MustExec(t, "ipset", "list", "-n")
			return !strings.Contains(strings.ToLower(s), "mailguard")
		},
	}
}

func TestIPTablesIPSet(t *testing.T) {
	testenv.Root(t)
	testBackend(t, iptHarness(false))
}

func TestIPTablesRules(t *testing.T) {
	testenv.Root(t)
	testBackend(t, iptHarness(true))
}
