package enforce

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/netnstest"
	"github.com/mailguard/mailguard/store/memstore"
)

// TestWidenNFTables: four /64s of one /56 banned by a prefix jail widen the
// ban to the /56 (prefix.ipv6_widen), and the kernel firewall (the real
// nftables backend, in a namespace pair of its own) then drops a fifth /64
// of that /56 that was never banned itself, while a client of the next /56
// still connects.
func TestWidenNFTables(t *testing.T) {
	p := netip.MustParsePrefix
	var attackers []netip.Addr
	for _, s := range []string{"fd00:200:0:0::2", "fd00:200:0:1::2", "fd00:200:0:2::2", "fd00:200:0:3::2"} {
		attackers = append(attackers, netip.MustParseAddr(s))
	}
	fifth, neighbour := netip.MustParseAddr("fd00:200:0:4::2"), netip.MustParseAddr("fd00:200:0:100::2")
	var clients []netip.Prefix
	for _, a := range append(slices.Clone(attackers), fifth, neighbour) {
		clients = append(clients, netip.PrefixFrom(a, 48))
	}
	n := netnstest.New(t, netnstest.Config{
		Name: "mgtest-widen", Server: []netip.Prefix{p("fd00:200::1/48")}, Client: clients,
		Ports: []int{993}, Ready: 10 * time.Second, OpenTimeout: 2 * time.Second, DropTimeout: 400 * time.Millisecond,
	})
	th := netnstest.Enter(t, n.Server)
	opts := firewall.Options{Log: slog.New(slog.NewTextHandler(t.Output(), nil))}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var nft *firewall.NFTables
	var err error
	th.Do(func() { nft, err = firewall.NewNFTables(ctx, opts) })
	if err != nil {
		t.Fatal(err)
	}
	defer nft.Close()

	ms, err := memstore.Open(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close()
	g, err := guard.New(ms, guard.Config{
		Jails: []guard.Jail{{Name: "dovecot", Events: []string{guard.EventAuthFailure}, Key: guard.KeyPrefix,
			MaxRetry: 1, FindTime: time.Minute, BanTime: time.Hour, Action: guard.ActionFirewall, Ports: []uint16{993}}},
		Widen: []guard.WidenStep{{Bits: 56, Bans: 4, Window: 10 * time.Minute}},
		Log:   opts.Log,
	})
	if err != nil {
		t.Fatal(err)
	}
	st := &watchedStore{Store: ms, seen: make(chan struct{})}
	done := make(chan error, 1)
	runCtx, stop := context.WithCancel(ctx)
	go func() {
		done <- (&Enforcer{Guard: g, Store: st, Firewall: nsFirewall{fw: nft, th: th}, Log: opts.Log}).Run(runCtx)
	}()
	defer func() { stop(); <-done }()
	for i := 0; ; i++ { // until events flow: ban a user (never the firewall)
		ban(t, ms, "dovecot-user", "user:probe@example.org")
		select {
		case <-st.seen:
		case <-time.After(10 * time.Millisecond):
			if i < 500 {
				continue
			}
			t.Fatal("the enforcer never watched the store")
		}
		break
	}

	n.WantOpen(t, fifth, 993)
	var made []string
	for _, a := range attackers {
		bans, err := g.Fail(ctx, a, "", "imap", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bans {
			made = append(made, b.Subject)
		}
	}
	if !slices.Contains(made, "net:fd00:200::/56") {
		t.Fatalf("bans made %v: no /56", made)
	}
	held := func() []string {
		var es []firewall.Entry
		th.Do(func() { es, err = firewall.List(ctx, firewall.NameNFTables, opts) })
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Prefix.String())
		}
		slices.Sort(out)
		return out
	}
	eventually(t, "the /56 in the kernel", func() bool { return slices.Contains(held(), "fd00:200::/56") })
	n.WaitDropped(t, fifth, 993, 5*time.Second)
	n.WantOpen(t, neighbour, 993)
	t.Logf("kernel holds %v", held())
}
