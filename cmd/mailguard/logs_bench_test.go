package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
)

// banSignal wraps the guard to tell when a log match has made a ban: when
// LogFailure returns it, the ban is in the store.
type banSignal struct {
	g    *guard.Guard
	bans chan time.Time
}

func (b banSignal) LogFailure(ctx context.Context, jail string, a netip.Addr, user, source string) ([]store.Ban, bool, error) {
	bans, counted, err := b.g.LogFailure(ctx, jail, a, user, source)
	if len(bans) > 0 {
		b.bans <- time.Now()
	}
	return bans, counted, err
}

// BenchmarkLogLineToBan measures the live path: from a Postfix reject line
// appended to a followed log file (inotify wakes the follower) to the ban
// in the embedded store, through the shipped postfix filter, one line and
// one ban (maxretry 1, a new client each time) at a time, 5 ms apart (so
// that the follower has saved its position and sleeps, as between the
// lines of a live log). It reports the p50 and p99 of that latency.
func BenchmarkLogLineToBan(b *testing.B) {
	dir := b.TempDir()
	mail := filepath.Join(dir, "mail.log")
	if err := os.WriteFile(mail, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	c := config.Defaults()
	c.StateDir = filepath.Join(dir, "state")
	j := c.Jails["postfix"]
	j.MaxRetry, j.Logs = 1, []config.LogSource{{Path: mail, Filter: "postfix"}}
	c.Jails = map[string]config.Jail{"postfix": j}
	plan, err := planLogs(c, func(string) (string, error) { return "", os.ErrNotExist })
	if err != nil {
		b.Fatal(err)
	}
	st, err := memstore.Open(memstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	g, err := guard.New(st, guard.Config{Jails: jails(c, plan.byJail), Log: quiet})
	if err != nil {
		b.Fatal(err)
	}
	sig := banSignal{g: g, bans: make(chan time.Time, 1)}
	r := &logRunner{plan: plan, g: sig, log: quiet, timeout: time.Second, metrics: &fakeLogMetrics{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.start(ctx, c.StateDir)
	defer r.stop()
	f, err := os.OpenFile(mail, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		line := fmt.Sprintf("Nov 29 09:25:15 mx postfix/smtpd[32009]: NOQUEUE: reject: RCPT from unknown[10.%d.%d.%d]: 550 5.1.1 <nosuch@mx.example.org>: Recipient address rejected: User unknown in local recipient table; from=<a@example.net> to=<nosuch@mx.example.org> proto=ESMTP helo=<client.example.net>\n",
			byte(i>>16), byte(i>>8), byte(i))
		start := time.Now()
		if _, err := f.WriteString(line); err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-sig.bans:
			lat = append(lat, at.Sub(start))
		case <-time.After(10 * time.Second):
			b.Fatalf("line %d made no ban within 10s", i)
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
