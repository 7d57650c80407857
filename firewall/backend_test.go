package firewall

import (
	"slices"
	"testing"
	"time"
)

// harness runs the same behaviour tests against every backend.
type harness struct {
	name        string // for Open, List and Flush
	open        func(t *testing.T, n *testNet) Backend
	breakByHand func(t *testing.T, n *testNet)        // empties the ban sets/rules behind the backend's back
	gone        func(t *testing.T, n *testNet) bool   // reports whether nothing of ours is left
	dump        func(t *testing.T, n *testNet) string // the kernel state, for -v
	expired     func(t *testing.T, n *testNet)        // checks that expired bans were cleaned up
	// breakages each remove part of the layout by hand (a jump, a chain, a
	// set, the table) while 10.200.0.2 and fd00:200::/64 are banned on
	// mailPort; the next Sync must restore it.
	breakages []breakage
}

type breakage struct {
	name string
	do   func(t *testing.T, n *testNet)
}

func testBackend(t *testing.T, h harness) {
	mail := []uint16{25, 465, 587, mailPort, 995}

	t.Run("AddRemove", func(t *testing.T) {
		n := newTestNet(t)
		b := h.open(t, n)
		ctx := testCtx(t)
		e := Entry{Prefix: pfx("10.200.0.2/32"), Ports: mail, Expires: time.Now().Add(time.Hour)}
		if err := b.Add(ctx, []Entry{e}); err != nil {
			t.Fatalf("Add: %v", err)
		}
		n.WantDropped(t, cli4, mailPort)
		n.WantOpen(t, cli4, otherPort)
		n.WantOpen(t, cli6a, mailPort)
		if err := b.Remove(ctx, []Entry{e}); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		n.WantOpen(t, cli4, mailPort)
		if err := b.Remove(ctx, []Entry{e}); err != nil {
			t.Errorf("Remove of an entry not held: %v", err)
		}
	})

	t.Run("Expiry", func(t *testing.T) {
		n := newTestNet(t)
		b := h.open(t, n)
		ctx := testCtx(t)
		es := []Entry{
			{Prefix: pfx("10.200.0.2/32"), Ports: mail, Expires: time.Now().Add(2 * time.Second)},
			{Prefix: pfx("fd00:200::/64"), Ports: mail, Expires: time.Now().Add(2 * time.Second)},
		}
		start := time.Now()
		if err := b.Add(ctx, es); err != nil {
			t.Fatalf("Add: %v", err)
		}
		n.WantDropped(t, cli4, mailPort)
		n.WantDropped(t, cli6a, mailPort)
		n.WaitOpen(t, cli4, mailPort, 15*time.Second)
		n.WaitOpen(t, cli6b, mailPort, 5*time.Second)
		t.Logf("a 2s ban: open again after %v", time.Since(start).Round(time.Millisecond))
		// The kernel (or the sweeper) forgets it too.
		deadline := time.Now().Add(5 * time.Second)
		for {
			got, err := b.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("List after expiry = %v, want empty", got)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if h.expired != nil {
			h.expired(t, n)
		}
		// Banned again after it ran out: in force again.
		es[0].Expires = time.Now().Add(time.Hour)
		if err := b.Add(ctx, es[:1]); err != nil {
			t.Fatalf("Add after expiry: %v", err)
		}
		n.WantDropped(t, cli4, mailPort)
	})

	t.Run("IPv6", func(t *testing.T) {
		n := newTestNet(t)
		b := h.open(t, n)
		ctx := testCtx(t)
		if err := b.Add(ctx, []Entry{{Prefix: pfx("fd00:200::/64"), Ports: mail, Expires: time.Now().Add(time.Hour)}}); err != nil {
			t.Fatalf("Add /64: %v", err)
		}
		n.WantDropped(t, cli6a, mailPort)
		n.WantDropped(t, cli6b, mailPort)
		n.WantOpen(t, cli6a, otherPort)
		n.WantOpen(t, cli4, mailPort)
		// A /128 inside the /64, same ports: both held, lifting the /64
		// leaves the host banned.
		host := Entry{Prefix: pfx("fd00:200::2/128"), Ports: mail, Expires: time.Now().Add(time.Hour)}
		if err := b.Add(ctx, []Entry{host}); err != nil {
			t.Fatalf("Add /128 inside a banned /64: %v", err)
		}
		if err := b.Remove(ctx, []Entry{{Prefix: pfx("fd00:200::/64"), Ports: mail}}); err != nil {
			t.Fatalf("Remove /64: %v", err)
		}
		n.WantDropped(t, cli6a, mailPort)
		n.WantOpen(t, cli6b, mailPort)
		got, err := b.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Prefix != host.Prefix || !slices.Equal(got[0].Ports, []uint16{25, 465, 587, 993, 995}) {
			t.Errorf("List = %v, want [%v]", got, host)
		}
	})

	t.Run("Renew", func(t *testing.T) {
		n := newTestNet(t)
		b := h.open(t, n)
		ctx := testCtx(t)
		e := Entry{Prefix: pfx("10.200.0.2/32"), Ports: mail, Expires: time.Now().Add(2 * time.Second)}
		if err := b.Add(ctx, []Entry{e}); err != nil {
			t.Fatal(err)
		}
		e.Expires = time.Now().Add(time.Hour)
		if err := b.Add(ctx, []Entry{e}); err != nil {
			t.Fatalf("Add again with a later expiry: %v", err)
		}
		time.Sleep(3 * time.Second)
		n.WantDropped(t, cli4, mailPort)
		got, err := b.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Expires.Before(time.Now().Add(50*time.Minute)) {
			t.Errorf("List = %v, want one entry expiring in about an hour", got)
		}
	})

	t.Run("CLI", func(t *testing.T) {
		n := newTestNet(t)
		ctx := testCtx(t)
		// Before the daemon ever ran: nothing to list or flush, nothing created.
		if got, err := n.list(ctx, h.name); err != nil || len(got) != 0 {
			t.Fatalf("List before any start = %v, %v; want nothing", got, err)
		}
		if err := n.flush(ctx, h.name); err != nil {
			t.Fatalf("Flush before any start: %v", err)
		}
		b := open(t, n, "Open", func() (Backend, error) { return Open(ctx, h.name, Options{Log: testLog(t)}) })
		e := Entry{Prefix: pfx("fd00:200::3/128"), Ports: []uint16{mailPort}, Expires: time.Now().Add(time.Hour)}
		if err := b.Add(ctx, []Entry{e}); err != nil {
			t.Fatal(err)
		}
		got, err := n.list(ctx, h.name)
		if err != nil || len(got) != 1 || got[0].Prefix != e.Prefix || !sameExpiry(got[0].Expires, e.Expires) {
			t.Fatalf("List = %v, %v; want [%v]", got, err, e)
		}
		if err := n.flush(ctx, h.name); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		n.WantOpen(t, cli6b, mailPort)
		if !h.gone(t, n) {
			t.Errorf("Flush left something of ours behind")
		}
	})

	t.Run("Repair", func(t *testing.T) {
		n := newTestNet(t)
		b := h.open(t, n)
		ctx := testCtx(t)
		want := []Entry{
			{Prefix: pfx("10.200.0.2/32"), Ports: mail, Expires: time.Now().Add(time.Hour)},
			{Prefix: pfx("fd00:200::/64"), Ports: mail, Expires: time.Now().Add(time.Hour)},
		}
		if err := b.Sync(ctx, want); err != nil {
			t.Fatal(err)
		}
		for _, br := range h.breakages {
			n.WantDropped(t, cli4, mailPort)
			n.WantDropped(t, cli6a, mailPort)
			br.do(t, n)
			if n.Dropped(t, cli4, mailPort) && n.Dropped(t, cli6a, mailPort) {
				t.Fatalf("%s: both clients still dropped; the breakage broke nothing", br.name)
			}
			if err := b.Sync(ctx, want); err != nil {
				t.Fatalf("%s: Sync: %v", br.name, err)
			}
			if n.Dropped(t, cli4, mailPort) && n.Dropped(t, cli6a, mailPort) {
				t.Logf("%s: repaired by Sync", br.name)
			} else {
				t.Errorf("%s: not repaired by Sync", br.name)
				if h.dump != nil {
					t.Log(h.dump(t, n))
				}
			}
		}
	})

	t.Run("SyncRepairRestartFlush", func(t *testing.T) {
		n := newTestNet(t)
		b := h.open(t, n)
		ctx := testCtx(t)
		exp := time.Now().Add(time.Hour)
		old := Entry{Prefix: pfx("10.200.0.2/32"), Ports: []uint16{otherPort}, Expires: exp}
		if err := b.Add(ctx, []Entry{old}); err != nil {
			t.Fatal(err)
		}
		want := []Entry{
			{Prefix: pfx("10.200.0.2/32"), Ports: mail, Expires: exp},
			{Prefix: pfx("fd00:200::/64"), Ports: mail, Expires: exp},
		}
		if err := b.Sync(ctx, want); err != nil {
			t.Fatalf("Sync: %v", err)
		}
		n.WantDropped(t, cli4, mailPort)
		n.WantOpen(t, cli4, otherPort) // the entry Sync did not name is gone
		n.WantDropped(t, cli6b, mailPort)

		if testing.Verbose() && h.dump != nil {
			t.Log(h.dump(t, n))
		}
		h.breakByHand(t, n)
		n.WantOpen(t, cli4, mailPort)
		if err := b.Sync(ctx, want); err != nil {
			t.Fatalf("Sync after a flush by hand: %v", err)
		}
		n.WantDropped(t, cli4, mailPort)
		n.WantDropped(t, cli6a, mailPort)

		// A daemon restart: the bans stay in force and a new instance sees them.
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		n.WantDropped(t, cli4, mailPort)
		b = h.open(t, n)
		n.WantDropped(t, cli4, mailPort)
		got, err := b.List(ctx)
		if err != nil {
			t.Fatalf("List after restart: %v", err)
		}
		if len(got) != 2 || got[0].Prefix != want[0].Prefix || got[1].Prefix != want[1].Prefix {
			t.Fatalf("List after restart = %v, want %v", got, want)
		}
		for _, e := range got {
			if !sameExpiry(e.Expires, exp) || !slices.Equal(e.Ports, []uint16{25, 465, 587, 993, 995}) {
				t.Errorf("List after restart: %v, want ports %v until %v", e, mail, exp)
			}
		}

		if err := b.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		n.WantOpen(t, cli4, mailPort)
		n.WantOpen(t, cli6a, mailPort)
		if !h.gone(t, n) {
			t.Errorf("Flush left something of ours behind")
		}
		if err := b.Flush(ctx); err != nil {
			t.Errorf("Flush twice: %v", err)
		}
	})
}
