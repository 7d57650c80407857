// Package logtest lets a test see what the code under test logs: a
// slog.Handler that counts lines by message and keeps their "suppressed"
// counts (internal/dedup's), for tests of log rate limits.
package logtest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// Lines is a slog.Handler that records every line at info and above. It is
// safe for concurrent use; the zero value is not: use New.
type Lines struct {
	mu         sync.Mutex
	lines      map[string]int
	suppressed map[string][]int64
	all        strings.Builder
}

// New returns an empty Lines.
func New() *Lines {
	return &Lines{lines: map[string]int{}, suppressed: map[string][]int64{}}
}

func (l *Lines) Enabled(context.Context, slog.Level) bool { return true }
func (l *Lines) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *Lines) WithGroup(string) slog.Handler            { return l }

// Handle records r if it is at info or above.
func (l *Lines) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines[r.Message]++
	fmt.Fprintf(&l.all, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&l.all, " %s=%v", a.Key, a.Value)
		if a.Key == "suppressed" {
			l.suppressed[r.Message] = append(l.suppressed[r.Message], a.Value.Int64())
		}
		return true
	})
	l.all.WriteByte('\n')
	return nil
}

// Count returns how many lines had message msg, and their "suppressed"
// values in order.
func (l *Lines) Count(msg string) (int, []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lines[msg], l.suppressed[msg]
}

// String returns every recorded line, one per line, with its attributes.
func (l *Lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}
