package redisstore_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestFaults stalls Redis (SIGSTOP) and kills it while calls run: each call
// fails within the client timeouts, errors are logged rate-limited, and after
// a restart on the same AOF the store works again with its bans intact and
// Watch delivers again.
func TestFaults(t *testing.T) {
	srv := redistest.StartServer(t, redistest.Config{AppendOnly: true})
	clk := newClock()
	var logs lockedBuffer
	opts := redisstore.Options{
		Addrs: []string{srv.Addr()}, Prefix: freshPrefix(t), Now: clk.Now,
		DialTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(&logs, nil)),
	}
	s := open(t, opts)
	w := open(t, opts)
	ctx := context.Background()
	ban, err := s.Ban(ctx, store.Ban{Jail: "manual", Subject: "net:192.0.2.99/32", Expires: clk.Now().Add(time.Hour), Reason: "before"})
	if err != nil {
		t.Fatal(err)
	}
	events := watchEvents(t, w)

	// hang bounds each call through its context. With Redis away a call
	// fails by the client's own timeouts (a pool wait and a read, 2×200 ms,
	// or a dial and a read); one that is still running at hang ignored
	// them. The figure is far from 400 ms on purpose: on a loaded machine
	// under -race the latency is noise, hanging is the bug. The worst
	// latency is logged.
	const hang = 10 * time.Second
	calls := map[string]func(context.Context) error{
		"Check": func(ctx context.Context) error {
			_, err := s.Check(ctx, store.Query{Subjects: []string{ban.Subject}, Counts: []store.Window{{Jail: "j", Subject: "x", Span: time.Minute}}})
			return err
		},
		"Hit": func(ctx context.Context) error {
			_, err := s.Hit(ctx, store.Hit{Jail: "j", Subject: "x", Span: time.Minute, MaxRetry: 5, BanTime: time.Hour})
			return err
		},
		"Ban": func(ctx context.Context) error {
			_, err := s.Ban(ctx, store.Ban{Jail: "manual", Subject: "y", Expires: clk.Now().Add(time.Hour)})
			return err
		},
		"Bans":     func(ctx context.Context) error { _, err := s.Bans(ctx); return err },
		"Remember": func(ctx context.Context) error { return s.Remember(ctx, "k", time.Hour) },
		"Ping":     s.Ping,
	}
	// exercise runs every call 3 times from 4 goroutines each, and checks
	// that all fail by themselves, not by the test's deadline.
	exercise := func(what string) {
		t.Helper()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var worst time.Duration
		for name, call := range calls {
			for range 4 {
				wg.Go(func() {
					for range 3 {
						cctx, cancel := context.WithTimeout(ctx, hang)
						start := time.Now()
						err := call(cctx)
						d := time.Since(start)
						hung := cctx.Err() != nil
						cancel()
						mu.Lock()
						worst = max(worst, d)
						mu.Unlock()
						if err == nil {
							t.Errorf("%s: %s succeeded", what, name)
						}
						if hung {
							t.Errorf("%s: %s was still running after %v: it ignores the client timeouts (%v)", what, name, hang, err)
						}
					}
				})
			}
		}
		wg.Wait()
		t.Logf("%s: every call failed, the slowest after %v", what, worst)
	}

	srv.Pause()
	exercise("Redis stalled (SIGSTOP)")
	srv.Resume()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping after SIGCONT: %v", err)
	}

	srv.Kill()
	exercise("Redis down")
	if n := strings.Count(logs.String(), "\n"); n < 1 || n > 6 {
		t.Errorf("%d lines logged for %d failed calls, want 1–6 (rate-limited)\n%s", n, 2*len(calls)*12, logs.String())
	}
	t.Logf("log during the faults:\n%s", logs.String())

	srv.Restart()
	// After a burst of dial errors go-redis fails fast and redials in the
	// background about once a second: allow it a few seconds.
	restarted := time.Now()
	for s.Ping(ctx) != nil && time.Since(restarted) < 5*time.Second {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("store usable again %v after the restart", time.Since(restarted))
	ans, err := s.Check(ctx, store.Query{Subjects: []string{ban.Subject}})
	if err != nil || len(ans.Bans) != 1 || ans.Bans[0] != ban {
		t.Fatalf("Check after restart = %+v, %v; want the ban made before (%+v)", ans, err, ban)
	}
	after, err := s.Ban(ctx, store.Ban{Jail: "manual", Subject: "net:192.0.2.100/32", Expires: clk.Now().Add(time.Hour), Reason: "after"})
	if err != nil {
		t.Fatal(err)
	}
	// Watch reconnects by itself (its backoff is at most 5 s).
	for {
		ev := nextEvent(t, events, 10*time.Second)
		if ev.Ban.Reason == "after" {
			if ev.Ban != after {
				t.Errorf("Watch after restart delivered %+v, want %+v", ev.Ban, after)
			}
			break
		}
	}
}
