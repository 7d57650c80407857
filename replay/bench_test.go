package replay

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/mailguard/mailguard/audit"
)

// busyDay is a day of a busy site as an audit file: n failures from 20,000
// addresses (a tenth of them IPv6) against 5,000 logins, spread evenly over
// 24 hours, every tenth event a refusal.
func busyDay(b *testing.B, n int) []byte {
	b.Helper()
	var buf bytes.Buffer
	step := 24 * time.Hour / time.Duration(n)
	for i := range n {
		a := fmt.Sprintf("10.%d.%d.%d", i%20000/65536, i%20000/256%256, i%256)
		if i%10 == 0 {
			a = fmt.Sprintf("2001:db8:%x::%x", i%20000, i%7)
		}
		e := audit.Event{V: audit.Version, ID: fmt.Sprintf("%010d", i), Time: day0.Add(time.Duration(i) * step), Node: "mx1",
			Kind: audit.KindFailure, Source: "dovecot", Event: "auth-failure", Protocol: "imap", Addr: a,
			User: fmt.Sprintf("user%d@example.org", i*7%5000), Jails: []string{"dovecot", "dovecot-user"}, Count: 1}
		if i%10 == 5 {
			e.Kind, e.Event, e.Jails, e.Jail, e.Subject = audit.KindRefusal, "", nil, "dovecot", "net:"+a+"/32"
		}
		line, err := audit.Marshal(e)
		if err != nil {
			b.Fatal(err)
		}
		buf.Write(line)
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

// BenchmarkReplay replays a busy day of a million events per iteration
// and reports events/s (README "What-if replay"): go test -run - -bench
// Replay -benchtime 3x ./replay
func BenchmarkReplay(b *testing.B) {
	n := benchEvents
	if testing.Short() {
		n = 100_000
	}
	day := busyDay(b, n)
	b.SetBytes(int64(len(day)))
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	for b.Loop() {
		res, err := Run(context.Background(), bytes.NewReader(day), Options{Guard: stricter()})
		if err != nil {
			b.Fatal(err)
		}
		if res.Events != n || len(res.Bad) != 0 {
			b.Fatalf("replayed %d events, %d bad", res.Events, len(res.Bad))
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/time.Since(start).Seconds(), "events/s")
	// On a loaded machine the wall clock says little: CPU time (all
	// threads, user and system) is what a replay costs.
	b.ReportMetric(float64(n)*float64(b.N)/(cpuTime()-cpu0).Seconds(), "events/cpu-s")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var benchEvents = 1_000_000
