package redisstore_test

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// recorder is a go-redis hook that records the commands a client sends,
// alone or in a pipeline (the store pipelines its request-path calls).
type recorder struct {
	mu   sync.Mutex
	cmds []string
}

func (r *recorder) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (r *recorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.mu.Lock()
		r.cmds = append(r.cmds, cmd.Name())
		r.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (r *recorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.mu.Lock()
		for _, c := range cmds {
			r.cmds = append(r.cmds, c.Name())
		}
		r.mu.Unlock()
		return next(ctx, cmds)
	}
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cmds
	r.cmds = nil
	return c
}

// commandStats reads INFO commandstats of every node: calls per command,
// summed.
func commandStats(t *testing.T, nodes []*redis.Client) map[string]int {
	t.Helper()
	m := map[string]int{}
	for _, c := range nodes {
		info, err := c.Info(context.Background(), "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\n") {
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
			if !ok {
				continue
			}
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			m[strings.TrimPrefix(name, "cmdstat_")] += n
		}
	}
	return m
}

// TestRoundTrips shows that Check and Hit are one command each, on the
// client (a hook sees what is sent) and on the servers (INFO commandstats:
// one EVALSHA, no other command from a client; the rest ran inside it), on
// a standalone server and on a three-master Cluster.
func TestRoundTrips(t *testing.T) {
	t.Run("Standalone", func(t *testing.T) { testRoundTrips(t, []string{redistest.Start(t)}) })
	t.Run("Cluster", func(t *testing.T) {
		testenv.Long(t, "starts a Redis Cluster")
		testRoundTrips(t, redistest.StartCluster(t, 3))
	})
}

func testRoundTrips(t *testing.T, addrs []string) {
	clk := newClock()
	s := open(t, redisstore.Options{Addrs: addrs, Prefix: freshPrefix(t), Now: clk.Now})
	var admin []*redis.Client
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		defer c.Close()
		admin = append(admin, c)
	}
	ctx := context.Background()
	rec := &recorder{}
	s.Client().AddHook(rec)

	q := store.Query{
		Subjects: []string{"net:192.0.2.7/32", "net:192.0.2.0/24", "user:alice@example.org", "user+net:alice@example.org|192.0.2.0/24"},
		Known:    "user+net:alice@example.org|192.0.2.0/24",
		Counts: []store.Window{
			{Jail: "dovecot", Subject: "net:192.0.2.0/24", Span: 10 * time.Minute},
			{Jail: "dovecot-user", Subject: "user:alice@example.org", Span: time.Hour},
		},
	}
	h := store.Hit{Jail: "dovecot", Subject: "net:192.0.2.0/24", Span: 10 * time.Minute, MaxRetry: 2, BanTime: time.Hour,
		Recidive: store.Recidive{Window: 24 * time.Hour, Factor: 2}}
	// Warm up: connections dialled, scripts cached.
	if _, err := s.Check(ctx, q); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Hit(ctx, store.Hit{Jail: "warm", Subject: "x", Span: time.Minute, MaxRetry: 9}); err != nil {
		t.Fatal(err)
	}
	rec.take()

	ops := []struct {
		name string
		call func() error
	}{
		{"Check", func() error { _, err := s.Check(ctx, q); return err }},
		{"Hit (count)", func() error { _, err := s.Hit(ctx, h); return err }},
		{"Hit (ban)", func() error {
			r, err := s.Hit(ctx, h)
			if err == nil && r.Ban == nil {
				t.Errorf("second hit did not ban")
			}
			return err
		}},
		{"Check (banned)", func() error {
			a, err := s.Check(ctx, q)
			if err == nil && len(a.Bans) != 1 {
				t.Errorf("Check = %+v, want a ban", a)
			}
			return err
		}},
	}
	for _, op := range ops {
		before := commandStats(t, admin)
		if err := op.call(); err != nil {
			t.Fatalf("%s: %v", op.name, err)
		}
		after := commandStats(t, admin)
		if got := rec.take(); len(got) != 1 || got[0] != "evalsha" {
			t.Errorf("%s sent %v, want [evalsha]", op.name, got)
		}
		var inner []string
		for name, n := range after {
			if d := n - before[name]; d > 0 && name != "info" && name != "cluster|info" {
				inner = append(inner, name+"×"+strconv.Itoa(d))
			}
		}
		if d := after["evalsha"] - before["evalsha"]; d != 1 || after["eval"] != before["eval"] || after["cluster|slots"] != before["cluster|slots"] {
			t.Errorf("%s: server ran evalsha %d times (eval %d), want once", op.name, d, after["eval"]-before["eval"])
		}
		slices.Sort(inner)
		t.Logf("%s: 1 EVALSHA; inside it: %s", op.name, strings.Join(inner, " "))
	}

	// NOSCRIPT: a flushed script cache costs one EVAL, then EVALSHA again.
	for _, c := range admin {
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Check(ctx, q); err != nil {
		t.Fatalf("Check after SCRIPT FLUSH: %v", err)
	}
	if got := rec.take(); strings.Join(got, " ") != "evalsha eval" {
		t.Errorf("Check after SCRIPT FLUSH sent %v, want [evalsha eval]", got)
	}
}
