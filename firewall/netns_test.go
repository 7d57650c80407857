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
	srv *netnstest.Thread // in the server namespace: every backend call runs here
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
	return &testNet{Net: n, srv: netnstest.Enter(t, n.Server)}
}

// open runs a backend constructor on the server namespace's thread and
// returns the backend wrapped so that every call runs there too.
func open[B Backend](t *testing.T, n *testNet, name string, newB func() (B, error)) Backend {
	t.Helper()
	var b B
	var err error
	n.srv.Do(func() { b, err = newB() })
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { b.Close() })
	return nsBackend{b: b, th: n.srv}
}

// nsBackend runs every call of b on th: a backend acts on the network
// namespace of the thread that calls it.
type nsBackend struct {
	b  Backend
	th *netnstest.Thread
}

func (n nsBackend) Add(ctx context.Context, es []Entry) (err error) {
	n.th.Do(func() { err = n.b.Add(ctx, es) })
	return err
}

func (n nsBackend) Remove(ctx context.Context, es []Entry) (err error) {
	n.th.Do(func() { err = n.b.Remove(ctx, es) })
	return err
}

func (n nsBackend) Sync(ctx context.Context, es []Entry) (err error) {
	n.th.Do(func() { err = n.b.Sync(ctx, es) })
	return err
}

func (n nsBackend) List(ctx context.Context) (es []Entry, err error) {
	n.th.Do(func() { es, err = n.b.List(ctx) })
	return es, err
}

func (n nsBackend) Flush(ctx context.Context) (err error) {
	n.th.Do(func() { err = n.b.Flush(ctx) })
	return err
}

func (n nsBackend) Close() error { return n.b.Close() }

// list and flush run the package's List and Flush (the CLI's, without a
// daemon) in the server namespace.
func (n *testNet) list(ctx context.Context, name string) (es []Entry, err error) {
	n.srv.Do(func() { es, err = List(ctx, name, Options{}) })
	return es, err
}

func (n *testNet) flush(ctx context.Context, name string) (err error) {
	n.srv.Do(func() { err = Flush(ctx, name, Options{}) })
	return err
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func testLog(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(t.Output(), nil)) }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
