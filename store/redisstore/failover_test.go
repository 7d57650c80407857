package redisstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// TestSentinelFailover: a master, one replica and three Sentinels
// (quorum 2). Bans, a failure window and a known device are written through
// a Store opened on the Sentinels, and the replica has them; then the master
// is killed (SIGKILL). While it is down every call fails within the client
// timeouts; once the Sentinels have promoted the replica the Store works
// again by itself, with every ban, window and device the replica kept; new
// Hits and bans work on the new master, and a Watch started before the
// failover delivers a ban made after it.
func TestSentinelFailover(t *testing.T) {
	const (
		name = "mymaster"
		// hang bounds each call through its context. With the master down
		// a call fails by the client's timeouts (a Sentinel query and a
		// dial, or a pool wait and a read: 500 ms dial, 300 ms read); one
		// still running at hang ignored them. Latency under -race on a
		// loaded machine is noise and only logged; hanging is the bug.
		hang = 10 * time.Second
		// failoverBound bounds the wait for the Sentinels and the Store:
		// down-after (1 s), the vote, the promotion, a possible second
		// election (2 × failover-timeout) and go-redis's redial (1 s).
		failoverBound = 30 * time.Second
	)
	// --repl-diskless-sync-delay 0: the master syncs the replica at once
	// (by default it waits 5 s for more replicas).
	master := redistest.StartServer(t, redistest.Config{Args: []string{"--repl-diskless-sync-delay", "0"}})
	replica := redistest.StartReplica(t, master.Addr(), redistest.Config{})
	sentinels := redistest.StartSentinels(t, name, master.Addr(), 3, redistest.SentinelConfig{
		Quorum: 2, DownAfter: time.Second, FailoverTimeout: 3 * time.Second, Replicas: 1,
	})
	ctx := context.Background()

	var logs lockedBuffer
	clk := newClock()
	opts := redisstore.Options{
		Addrs: sentinels, MasterName: name, Prefix: freshPrefix(t), Now: clk.Now,
		Log: slog.New(slog.NewTextHandler(&logs, nil)),
	}
	opts.Node = "mx1"
	s := open(t, opts)
	opts.Node = "mx2"
	w := open(t, opts) // another node, watching
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("store log:\n%s", logs.String())
		}
	})
	events := watchEvents(t, w)

	// Before: a manual ban, a ban made by a Hit, a failure window at 2 of 3,
	// a known device.
	manual, err := s.Ban(ctx, store.Ban{Jail: "manual", Subject: "net:192.0.2.1/32", Expires: clk.Now().Add(time.Hour), Reason: "before failover"})
	if err != nil {
		t.Fatal(err)
	}
	hb := store.Hit{Jail: "postfix", Subject: "net:192.0.2.2/32", Span: 10 * time.Minute, MaxRetry: 1, BanTime: time.Hour}
	r, err := s.Hit(ctx, hb)
	if err != nil || r.Ban == nil {
		t.Fatalf("Hit = %+v, %v; want a ban", r, err)
	}
	hitBan := *r.Ban
	hw := store.Hit{Jail: "dovecot", Subject: "net:192.0.2.3/32", Span: 10 * time.Minute, MaxRetry: 3, BanTime: time.Hour, Reason: "after failover"}
	for i := 1; i <= 2; i++ {
		clk.Add(time.Second)
		if r, err := s.Hit(ctx, hw); err != nil || r.Count != i || r.Ban != nil {
			t.Fatalf("Hit %d = %+v, %v; want count %d, no ban", i, r, err, i)
		}
	}
	if err := s.Remember(ctx, "device-1", time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, want := range []store.Ban{manual, hitBan} {
		if ev := nextEvent(t, events, eventWait); ev.Kind != store.Banned || ev.Ban != want {
			t.Fatalf("Watch before the failover delivered %v %+v, want ban %+v", ev.Kind, ev.Ban, want)
		}
	}

	// "A ban that Redis kept": the replica has acknowledged everything the
	// master had when we look.
	mc := redis.NewClient(&redis.Options{Addr: master.Addr(), MaxRetries: -1})
	defer mc.Close()
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr(), MaxRetries: -1})
	defer rc.Close()
	want := replOffset(t, mc, "master_repl_offset")
	synced := time.Now()
	for replOffset(t, rc, "slave_repl_offset") < want {
		if time.Since(synced) > 5*time.Second {
			t.Fatalf("replica did not reach offset %d in 5 s", want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if nm, nr := mc.DBSize(ctx).Val(), rc.DBSize(ctx).Val(); nm == 0 || nr != nm {
		t.Fatalf("replica has %d keys, master %d", nr, nm)
	}
	t.Logf("replica in sync after %v", time.Since(synced))

	// The failover.
	master.Kill()
	killed := time.Now()
	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"Ping", s.Ping},
		{"Check", func(ctx context.Context) error {
			_, err := s.Check(ctx, store.Query{Subjects: []string{manual.Subject}, Known: "device-1", Counts: []store.Window{{Jail: hw.Jail, Subject: hw.Subject, Span: hw.Span}}})
			return err
		}},
		{"Hit", func(ctx context.Context) error { // counts only, never bans
			_, err := s.Hit(ctx, store.Hit{Jail: "probe", Subject: "net:198.51.100.1/32", Span: time.Minute, MaxRetry: 1000})
			return err
		}},
		{"Bans", func(ctx context.Context) error { _, err := s.Bans(ctx); return err }},
		{"Remember", func(ctx context.Context) error { return s.Remember(ctx, "device-2", time.Hour) }},
	}
	var (
		failed, slowest  time.Duration
		nfail            int
		switched, usable time.Duration // since the kill; 0: not yet
	)
	for switched == 0 || usable == 0 {
		if time.Since(killed) > failoverBound {
			t.Fatalf("after %v: sentinels switched after %v, store usable after %v (0: not yet); Sentinels say %v",
				failoverBound, switched, usable, sentinelMasters(ctx, sentinels, name))
		}
		if switched == 0 && !slices.ContainsFunc(sentinelMasters(ctx, sentinels, name), func(a string) bool { return a != replica.Addr() }) {
			switched = time.Since(killed)
		}
		ok := true
		for _, c := range calls {
			cctx, cancel := context.WithTimeout(ctx, hang)
			start := time.Now()
			err := c.call(cctx)
			d := time.Since(start)
			if cctx.Err() != nil {
				t.Errorf("%v after the kill: %s was still running after %v: it ignores the client timeouts (%v)", start.Sub(killed), c.name, hang, err)
			}
			cancel()
			slowest = max(slowest, d)
			if err != nil {
				ok = false
				nfail++
				failed = time.Since(killed)
			}
		}
		if ok && usable == 0 {
			usable = time.Since(killed)
		}
		if !ok {
			usable = 0 // not yet: one success among failures does not count
		}
		time.Sleep(50 * time.Millisecond)
	}
	if t.Failed() {
		t.FailNow()
	}
	if nfail == 0 {
		t.Fatal("no call failed after the master was killed: the test saw no outage")
	}
	t.Logf("master killed: %d calls failed (the last %v after the kill, the slowest took %v); "+
		"every Sentinel reported the replica as master %v after the kill; the store answered again %v after it",
		nfail, failed, slowest, switched, usable)

	// Everything the replica kept is there.
	ans, err := s.Check(ctx, store.Query{
		Subjects: []string{manual.Subject, hitBan.Subject, hw.Subject},
		Known:    "device-1",
		Counts:   []store.Window{{Jail: hw.Jail, Subject: hw.Subject, Span: hw.Span}},
	})
	if err != nil {
		t.Fatalf("Check after the failover: %v", err)
	}
	if !sameBans(ans.Bans, []store.Ban{manual, hitBan}) || !ans.Known || !slices.Equal(ans.Counts, []int{2}) {
		t.Fatalf("Check after the failover = %+v; want bans %+v and %+v, known, count 2", ans, manual, hitBan)
	}
	for _, st := range []*redisstore.Store{s, w} {
		bans, err := st.Bans(ctx)
		if err != nil || !sameBans(bans, []store.Ban{manual, hitBan}) {
			t.Fatalf("Bans after the failover = %+v, %v; want %+v and %+v", bans, err, manual, hitBan)
		}
	}

	// New Hits and bans work on the new master: the window kept from
	// before reaches its threshold.
	clk.Add(time.Second)
	r, err = s.Hit(ctx, hw)
	if err != nil || r.Count != 3 || r.Ban == nil {
		t.Fatalf("third Hit after the failover = %+v, %v; want count 3 and a ban", r, err)
	}
	newBan := *r.Ban
	if role := rc.Do(ctx, "ROLE").String(); !strings.Contains(role, "master") {
		t.Errorf("the old replica's ROLE = %s, want master", role)
	}
	ans, err = w.Check(ctx, store.Query{Subjects: []string{hw.Subject}})
	if err != nil || !sameBans(ans.Bans, []store.Ban{newBan}) {
		t.Fatalf("other node's Check of the new ban = %+v, %v; want %+v", ans, err, newBan)
	}

	// Watch, started before the failover, delivers the ban made after it
	// (its reconnection backoff is at most 5 s).
	ev := nextEvent(t, events, 15*time.Second)
	if ev.Kind != store.Banned || ev.Ban != newBan {
		t.Fatalf("Watch after the failover delivered %v %+v, want ban %+v", ev.Kind, ev.Ban, newBan)
	}
	t.Logf("Watch delivered the new ban %v after the kill", time.Since(killed))
}

// replOffset reads a replication offset field of INFO replication.
func replOffset(t *testing.T, c *redis.Client, field string) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "replication").Result()
	if err != nil {
		t.Fatalf("INFO replication on %s: %v", c.Options().Addr, err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("INFO replication on %s: %s: %v", c.Options().Addr, field, err)
			}
			return n
		}
	}
	t.Fatalf("INFO replication on %s has no %s:\n%s", c.Options().Addr, field, info)
	return 0
}

// sentinelMasters asks each Sentinel for the master's address (an error
// text when one does not answer).
func sentinelMasters(ctx context.Context, sentinels []string, name string) []string {
	out := make([]string, len(sentinels))
	for i, a := range sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: a, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
		hp, err := sc.GetMasterAddrByName(ctx, name).Result()
		sc.Close()
		switch {
		case err != nil:
			out[i] = err.Error()
		case len(hp) != 2:
			out[i] = fmt.Sprint(hp)
		default:
			out[i] = hp[0] + ":" + hp[1]
		}
	}
	return out
}

// sameBans reports whether got and want hold the same bans in any order.
func sameBans(got, want []store.Ban) bool {
	if len(got) != len(want) {
		return false
	}
	for _, b := range want {
		if !slices.Contains(got, b) {
			return false
		}
	}
	return true
}
