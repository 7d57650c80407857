package redisstore

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// limiter lets one log line through every errLogEvery and counts the rest.
type limiter struct {
	mu      sync.Mutex
	last    time.Time
	dropped int
}

// allow reports whether a line may be logged now, and how many were
// suppressed since the last one.
func (l *limiter) allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < errLogEvery {
		l.dropped++
		return false, 0
	}
	suppressed = l.dropped
	l.last, l.dropped = now, 0
	return true, suppressed
}

// libLog receives go-redis's own log lines (a dial failing, a pool
// problem). go-redis's logger is process-wide: Open points it here once, and
// here lines go, rate-limited, to the logger of the most recently opened
// Store. Without this every failed dial of an outage is a line on stderr.
var libLog = &libLogger{}

var libLogOnce sync.Once

type libLogger struct {
	lim limiter
	log atomic.Pointer[slog.Logger]
}

func (l *libLogger) Printf(_ context.Context, format string, args ...any) {
	lg := l.log.Load()
	if lg == nil {
		return
	}
	if ok, n := l.lim.allow(); ok {
		lg.Warn("go-redis", "msg", fmt.Sprintf(format, args...), "suppressed", n)
	}
}

func routeLibraryLog(lg *slog.Logger) {
	libLog.log.Store(lg)
	libLogOnce.Do(func() { redis.SetLogger(libLog) })
}
