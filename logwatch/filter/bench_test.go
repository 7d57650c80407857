package filter

import (
	"os"
	"strings"
	"testing"
	"time"
)

// BenchmarkTracker runs the shipped postfix filter (fail2ban-regex's way:
// every failregex tried) over the recorded Postfix and postscreen lines.
func BenchmarkTracker(b *testing.B) {
	for _, mode := range []string{"normal", "aggressive"} {
		b.Run(mode, func(b *testing.B) {
			f, err := LoadShipped("postfix", mode, nil)
			if err != nil {
				b.Fatal(err)
			}
			var lines []string
			for _, name := range []string{"testdata/postfix.log", "testdata/postscreen.log"} {
				data, err := os.ReadFile(name)
				if err != nil {
					b.Fatal(err)
				}
				lines = append(lines, strings.Split(strings.TrimSpace(string(data)), "\n")...)
			}
			if p := os.Getenv("MAILGUARD_BENCH_LOG"); p != "" {
				data, err := os.ReadFile(p)
				if err != nil {
					b.Fatal(err)
				}
				lines = strings.Split(strings.TrimSpace(string(data)), "\n")
			}
			tr := f.NewRegexTracker()
			now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tr.Examine(lines[i%len(lines)], now)
			}
		})
	}
}
