package redisstore

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/internal/dedup"
)

// libLog receives go-redis's own log lines (a dial failing, a pool
// problem). go-redis's logger is process-wide: Open points it here once, and
// here lines go, rate-limited, to the logger of the most recently opened
// Store. Without this every failed dial of an outage is a line on stderr.
var libLog = &libLogger{}

var libLogOnce sync.Once

type libLogger struct {
	lim dedup.Limiter // one line per dedup.DefaultPeriod (5 s)
	log atomic.Pointer[slog.Logger]
}

func (l *libLogger) Printf(_ context.Context, format string, args ...any) {
	lg := l.log.Load()
	if lg == nil {
		return
	}
	if ok, n := l.lim.Allow("go-redis", time.Now()); ok {
		lg.Warn("go-redis", "msg", fmt.Sprintf(format, args...), "suppressed", n)
	}
}

func routeLibraryLog(lg *slog.Logger) {
	libLog.log.Store(lg)
	libLogOnce.Do(func() { redis.SetLogger(libLog) })
}
