package firewall

import (
	"strings"
	"testing"

	"github.com/mailguard/mailguard/internal/testenv"
)

func TestIPTables(t *testing.T) {
	testenv.Root(t)
	testBackend(t, harness{
		name: NameIPTables,
		open: func(t *testing.T, n *testNet) Backend {
			testenv.Command(t, "iptables")
			testenv.Command(t, "ipset")
			return open(t, n, "NewIPTables", func() (*IPTables, error) { return NewIPTables(testCtx(t), Options{Log: testLog(t)}) })
		},
		breakByHand: func(t *testing.T, n *testNet) {
			for _, name := range strings.Fields(n.MustExec(t, "ipset", "list", "-n")) {
				n.MustExec(t, "ipset", "flush", name)
			}
		},
		breakages: []breakage{
			{"INPUT jump deleted", func(t *testing.T, n *testNet) {
				n.MustExec(t, append([]string{"iptables", "-D", "INPUT"}, iptJump...)...)
			}},
			{"chain deleted", func(t *testing.T, n *testNet) {
				n.MustExec(t, append([]string{"ip6tables", "-D", "INPUT"}, iptJump...)...)
				n.MustExec(t, "ip6tables", "-F", iptChain)
				n.MustExec(t, "ip6tables", "-X", iptChain)
			}},
			{"ipset destroyed", func(t *testing.T, n *testNet) {
				// A set in use cannot be destroyed: its rules go first.
				n.MustExec(t, "iptables", "-F", iptChain)
				n.MustExec(t, "ipset", "destroy", setName(false, []uint16{25, 465, 587, mailPort, 995}))
			}},
			{"everything deleted", func(t *testing.T, n *testNet) {
				for _, ipt := range []string{"iptables", "ip6tables"} {
					n.MustExec(t, append([]string{ipt, "-D", "INPUT"}, iptJump...)...)
					n.MustExec(t, ipt, "-F", iptChain)
					n.MustExec(t, ipt, "-X", iptChain)
				}
				for _, name := range strings.Fields(n.MustExec(t, "ipset", "list", "-n")) {
					n.MustExec(t, "ipset", "destroy", name)
				}
			}},
		},
		dump: func(t *testing.T, n *testNet) string {
			return n.MustExec(t, "iptables", "-S") + n.MustExec(t, "ip6tables", "-S") + n.MustExec(t, "ipset", "save")
		},
		gone: func(t *testing.T, n *testNet) bool {
			s := n.MustExec(t, "iptables", "-S") + n.MustExec(t, "ip6tables", "-S") + n.MustExec(t, "ipset", "list", "-n")
			return !strings.Contains(strings.ToLower(s), "mailguard")
		},
	})
}
