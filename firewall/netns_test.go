package firewall

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/netnstest"
)

// testNet is two network namespaces joined by a veth pair: a server running
// TCP listeners and the firewall under test, and a client dialling it.
//
//	client  10.200.0.2/24  fd00:200::2/64 fd00:200::3/64
//	server  10.200.0.1/24  fd00:200::1/64   listening on 993 and 8080
type testNet struct {
	*netnstest.Net
	serverPath string // /run/netns/NAME, for Options.NetNS
}

// The client's addresses.
var (
	cli4  = netip.MustParseAddr("10.200.0.2")
	cli6a = netip.MustParseAddr("fd00:200::2")
	cli6b = netip.MustParseAddr("fd00:200::3")
)

const (
	mailPort  = 993
	otherPort = 8080
)

// newTestNet builds the namespaces and removes them when the test ends,
// whatever happens.
func newTestNet(t *testing.T) *testNet {
	t.Helper()
	n := netnstest.New(t, netnstest.Config{
		Name:        "mgtest",
		Server:      []netip.Prefix{pfx("10.200.0.1/24"), pfx("fd00:200::1/64")},
		Client:      []netip.Prefix{netip.PrefixFrom(cli4, 24), netip.PrefixFrom(cli6a, 64), netip.PrefixFrom(cli6b, 64)},
		Ports:       []int{mailPort, otherPort},
		Ready:       5 * time.Second,
		OpenTimeout: 2 * time.Second,
		DropTimeout: 400 * time.Millisecond,
		PollTimeout: 200 * time.Millisecond,
	})
	return &testNet{Net: n, serverPath: netnstest.Path(n.Server)}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func testLog(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(t.Output(), nil)) }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
