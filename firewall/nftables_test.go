package firewall

import (
	"strings"
	"testing"

	"github.com/mailguard/mailguard/internal/testenv"
)

func TestNFTables(t *testing.T) {
	testenv.Root(t)
	testBackend(t, harness{
		name: NameNFTables,
		open: func(t *testing.T, n *testNet) Backend {
			return open(t, n, "NewNFTables", func() (*NFTables, error) { return NewNFTables(testCtx(t), Options{Log: testLog(t)}) })
		},
		breakByHand: func(t *testing.T, n *testNet) {
			testenv.Command(t, "nft")
			for _, set := range []string{"ban4_32_p25_465_587_993_995", "ban6_64_p25_465_587_993_995"} {
				n.MustExec(t, "nft", "flush", "set", "inet", "mailguard", set)
			}
		},
		breakages: []breakage{
			{"table deleted", func(t *testing.T, n *testNet) { n.MustExec(t, "nft", "delete", "table", "inet", "mailguard") }},
			{"chain deleted", func(t *testing.T, n *testNet) { n.MustExec(t, "nft", "delete", "chain", "inet", "mailguard", "input") }},
			{"rules flushed", func(t *testing.T, n *testNet) { n.MustExec(t, "nft", "flush", "chain", "inet", "mailguard", "input") }},
		},
		dump: func(t *testing.T, n *testNet) string { return n.MustExec(t, "nft", "list", "ruleset") },
		gone: func(t *testing.T, n *testNet) bool {
			testenv.Command(t, "nft")
			return !strings.Contains(n.MustExec(t, "nft", "list", "ruleset"), "mailguard")
		},
	})
}
