package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// watchEvents runs s.Watch until the test ends and returns its events once
// Watch has found the end of the stream: every ban made after watchEvents
// returns is delivered.
func watchEvents(t *testing.T, s *redisstore.Store) <-chan store.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan store.Event, 64)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(redisstore.WithWatchReady(ctx, func() { close(ready) }), func(ev store.Event) { ch <- ev })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Watch returned %v before it started", err)
	case <-time.After(eventWait):
		t.Fatalf("Watch did not find the end of the stream within %v", eventWait)
	}
	return ch
}

// eventWait bounds every wait for Watch; events normally take milliseconds.
const eventWait = 15 * time.Second

func nextEvent(t *testing.T, ch <-chan store.Event, within time.Duration) store.Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(within):
		t.Fatalf("no event within %v", within)
		return store.Event{}
	}
}

// TestTwoNodes: two Stores (two mail servers) on one Redis share windows,
// bans and events.
func TestTwoNodes(t *testing.T) {
	addr := redistest.Start(t)
	clk := newClock()
	prefix := freshPrefix(t)
	a := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: prefix, Now: clk.Now, Node: "mx1"})
	b := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: prefix, Now: clk.Now, Node: "mx2"})
	ctx := context.Background()
	evB := watchEvents(t, b)
	evA := watchEvents(t, a)

	h := store.Hit{Jail: "dovecot", Subject: "net:203.0.113.0/24", Span: 10 * time.Minute, MaxRetry: 5, BanTime: time.Hour}
	var ban *store.Ban
	var banAt time.Time
	for i := 1; i <= h.MaxRetry; i++ {
		s := a
		if i%2 == 0 {
			s = b
		}
		banAt = time.Now()
		r, err := s.Hit(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		if r.Count != i || (r.Ban != nil) != (i == h.MaxRetry) {
			t.Fatalf("hit %d (node %d) = %+v, want count %d, ban only at %d", i, 2-i%2, r, i, h.MaxRetry)
		}
		ban = r.Ban
		clk.Add(time.Second)
	}
	ev := nextEvent(t, evB, eventWait)
	if ev.Kind != store.Banned || ev.Ban != *ban {
		t.Fatalf("B saw %v %+v, want ban %+v", ev.Kind, ev.Ban, *ban)
	}
	t.Logf("ban made through A seen by B's Watch after %v", time.Since(banAt))
	if ev := nextEvent(t, evA, eventWait); ev.Kind != store.Banned {
		t.Fatalf("A saw %v, want its own ban", ev.Kind)
	}
	ans, err := b.Check(ctx, store.Query{Subjects: []string{h.Subject}})
	if err != nil || len(ans.Bans) != 1 {
		t.Fatalf("B's Check = %+v, %v; want the ban", ans, err)
	}

	lifted, err := b.Unban(ctx, h.Subject)
	if err != nil || len(lifted) != 1 {
		t.Fatalf("B's Unban = %+v, %v", lifted, err)
	}
	if ev := nextEvent(t, evA, eventWait); ev.Kind != store.Unbanned || ev.Ban != *ban {
		t.Fatalf("A saw %v %+v, want the unban", ev.Kind, ev.Ban)
	}
	ans, err = a.Check(ctx, store.Query{Subjects: []string{h.Subject}})
	if err != nil || len(ans.Bans) != 0 {
		t.Fatalf("A's Check after B's Unban = %+v, %v; want no ban", ans, err)
	}
	bans, err := a.Bans(ctx)
	if err != nil || len(bans) != 0 {
		t.Fatalf("A's Bans after B's Unban = %+v, %v; want none", bans, err)
	}
}
