// Package redisstore is the store.Store shared by every mailguard node of a
// site, kept in Redis (standalone, Sentinel or Cluster, through go-redis's
// UniversalClient).
//
// Check and Hit are one EVALSHA each (Lua scripts reloaded on NOSCRIPT); every
// script touches keys of a single hash slot, so Redis Cluster works; every key
// carries the prefix and a TTL. Bans and unbans are appended to a Redis stream
// in the same script that makes them, and Watch follows that stream.
//
// All of a store's keys share one hash tag (keys.go has the schema), so Check
// and Hit stay single commands in Cluster too; the price is that one Cluster
// master holds all of one site's mailguard state (measured: ~11 µs of Redis
// CPU per Check, ~17 µs per Hit, ~40 bytes per tracked address, ~320 per
// ban): Cluster gives mailguard failover and a shared deployment, not
// sharding.
//
// The clock is the caller's (Options.Now), passed to the scripts as
// arguments, never Redis TIME: nodes and tests agree on what "now" is.
//
// Open routes go-redis's own process-wide log through Options.Log,
// rate-limited. Redis 6.2 or later is required (ZADD GT); 7.0 is tested.
package redisstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/internal/dedup"
	"github.com/mailguard/mailguard/store"
)

// Defaults for the zero Options fields.
const (
	DefaultPrefix       = "mailguard:"
	DefaultDialTimeout  = 500 * time.Millisecond
	DefaultReadTimeout  = 300 * time.Millisecond
	DefaultWriteTimeout = 300 * time.Millisecond
)

// Tuning that is not configuration.
const (
	// slack is added to every key's TTL, so that small clock differences
	// between nodes never expire a key some node still counts on.
	slack = time.Minute
	// streamMaxLen bounds the event stream (approximately, MAXLEN ~). Events
	// are for nodes that are up; a node that was away reconciles with Bans.
	streamMaxLen = 10000
	streamTTL    = 7 * 24 * time.Hour
	// statsTTL is how long the counters outlive the last failure or ban.
	statsTTL = 90 * 24 * time.Hour
	// defaultRecidiveWindow applies to bans placed with Ban before any Hit
	// told the store the configured recidive window.
	defaultRecidiveWindow = 7 * 24 * time.Hour
	// historyMax bounds the recidive history of one (jail, subject).
	historyMax = 256
	// bansPage is how many banned subjects one Bans script reads.
	bansPage = 1000
	// failingPage is how many window shards one script of Stats reads.
	failingPage = 32
	// watchBlock is how long one XREAD of Watch waits; Watch notices the
	// end of its context within about this long.
	watchBlock = time.Second
)

// Options configures Open. The zero value is a store on 127.0.0.1:6379.
type Options struct {
	// URL is redis://[user:password@]host:port[/db] or rediss:// for TLS.
	// It names a standalone server; use Addrs for Sentinel or Cluster.
	URL string
	// Addrs: one address is a standalone server, several are the seed nodes
	// of a Cluster; with MasterName they are Sentinels. Exclusive with URL.
	Addrs []string
	// MasterName is the Sentinel master; empty: no Sentinel.
	MasterName string
	// Username and Password authenticate (ACL user or requirepass); when set
	// they override the URL's.
	Username, Password string
	// TLS, when not nil, enables TLS with this configuration (a private CA,
	// a client certificate). Without it, a rediss:// URL uses TLS with the
	// system's roots.
	TLS *tls.Config
	// PoolSize is the connections per node; zero: 4×GOMAXPROCS, at least 10.
	PoolSize int
	// Timeouts of one network operation; zero: the Default constants. With
	// Redis stalled or down a call fails within about 2×ReadTimeout (a wait
	// for a pooled connection, then for the reply), or DialTimeout +
	// ReadTimeout when it must dial; the caller's context deadline, when
	// shorter, bounds it too. Calls are never retried: a retried Hit could
	// count twice.
	DialTimeout, ReadTimeout, WriteTimeout time.Duration
	// Prefix starts every key; zero: DefaultPrefix. Several mailguard
	// sites can share one Redis with distinct prefixes. All keys also carry
	// one hash tag: the prefix's own ("app:{mg}:") or one made of the prefix
	// ("mailguard:" gives "mailguard:{mailguard}:…").
	Prefix string
	// Now is the clock; nil: time.Now. Every node should run NTP.
	Now func() time.Time
	// Log receives errors (at most one line every few seconds) and Watch's
	// reconnections; nil: slog.Default().
	Log *slog.Logger
	// Node names this node in the events it publishes; zero: the host name.
	Node string
}

// Store is a store.Store in Redis. It is safe for concurrent use.
type Store struct {
	c    redis.UniversalClient
	k    keys
	now  func() time.Time
	log  *slog.Logger
	node string
	read time.Duration

	closed atomic.Bool
	done   chan struct{}
	once   sync.Once

	errs dedup.Limiter // error lines, one per dedup.DefaultPeriod (5 s)
	b    *batcher      // Check, Hit, Remember and Reset go through it (pipeline.go)
}

var _ store.Store = (*Store)(nil)

// Open connects to Redis and returns a Store. It pings the server once: a
// refusal (wrong password, ACL, db) is an error; an unreachable server is
// logged and the Store returned anyway, its calls failing until Redis is
// back. Outages are errors of the calls made during them, and go-redis
// reconnects by itself.
func Open(ctx context.Context, o Options) (*Store, error) {
	return open(ctx, o, nil)
}

// open is Open; tune, when not nil, adjusts the batcher before it starts
// (tests).
func open(ctx context.Context, o Options, tune func(*batcher)) (*Store, error) {
	uo, err := universalOptions(o)
	if err != nil {
		return nil, err
	}
	prefix := o.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	k, err := newKeys(prefix)
	if err != nil {
		return nil, err
	}
	s := &Store{
		c: redis.NewUniversalClient(uo), k: k, now: o.Now, log: o.Log,
		node: o.Node, read: uo.ReadTimeout, done: make(chan struct{}),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.node == "" {
		s.node = hostname()
	}
	s.b = newBatcher(s.c, s.done, uo.PoolTimeout)
	routeLibraryLog(s.log)
	if err := s.Ping(ctx); err != nil {
		var reply redis.Error
		var cert *tls.CertificateVerificationError
		var record tls.RecordHeaderError
		if errors.As(err, &reply) || errors.As(err, &cert) || errors.As(err, &record) {
			// Redis answered and said no (a wrong password, ACL or db), or
			// TLS failed (an untrusted certificate, TLS to a plain port):
			// configuration errors, not an outage.
			s.c.Close()
			return nil, err
		}
		// Unreachable for now: start anyway. Calls fail (and the front ends
		// answer per store.fail_mode) until Redis is back; go-redis redials.
		s.log.Warn("redisstore: Redis unreachable at start; answering per store.fail_mode until it is back", "err", err)
	}
	if tune != nil {
		tune(s.b)
	}
	return s, nil
}

func universalOptions(o Options) (*redis.UniversalOptions, error) {
	uo := &redis.UniversalOptions{
		Addrs: o.Addrs, MasterName: o.MasterName, TLSConfig: o.TLS,
		PoolSize:     o.PoolSize,
		DialTimeout:  o.DialTimeout,
		ReadTimeout:  o.ReadTimeout,
		WriteTimeout: o.WriteTimeout,
		// A caller's deadline (store.timeout) bounds the socket I/O too.
		ContextTimeoutEnabled: true,
		// No retries: a Hit retried after a timeout may count twice, and
		// retries stretch an outage past the front ends' timeout. Dead
		// pooled connections are dropped by go-redis's health check.
		MaxRetries:      -1,
		DialerRetries:   1,
		DisableIdentity: true,
		// RESP2: scripts answer the same arrays and integers, and go-redis
		// does not look for RESP3 push notifications before every reply (a
		// few % of the CPU of a pipelined request).
		Protocol: 2,
	}
	if o.URL != "" {
		if len(o.Addrs) > 0 || o.MasterName != "" {
			return nil, errors.New("redisstore: URL and Addrs/MasterName are exclusive")
		}
		po, err := redis.ParseURL(o.URL)
		if err != nil {
			return nil, fmt.Errorf("redisstore: url: %w", err)
		}
		uo.Addrs = []string{po.Addr}
		uo.Username, uo.Password, uo.DB = po.Username, po.Password, po.DB
		if po.TLSConfig != nil && uo.TLSConfig == nil {
			uo.TLSConfig = po.TLSConfig
		}
	}
	if len(uo.Addrs) == 0 {
		if o.MasterName != "" {
			return nil, errors.New("redisstore: MasterName needs the Sentinel Addrs")
		}
		uo.Addrs = []string{"127.0.0.1:6379"}
	}
	if o.Username != "" {
		uo.Username = o.Username
	}
	if o.Password != "" {
		uo.Password = o.Password
	}
	if uo.PoolSize <= 0 {
		uo.PoolSize = max(10, 4*runtime.GOMAXPROCS(0))
	}
	if uo.DialTimeout <= 0 {
		uo.DialTimeout = DefaultDialTimeout
	}
	if uo.ReadTimeout <= 0 {
		uo.ReadTimeout = DefaultReadTimeout
	}
	if uo.WriteTimeout <= 0 {
		uo.WriteTimeout = DefaultWriteTimeout
	}
	// Waiting longer for a pooled connection than for Redis itself would
	// only queue requests behind an outage.
	uo.PoolTimeout = uo.ReadTimeout
	return uo, nil
}

// Ping checks that the node holding the store's keys answers: the health
// check behind /healthz.
func (s *Store) Ping(ctx context.Context) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if err := s.c.Exists(ctx, s.k.stats).Err(); err != nil {
		return s.fail("ping", err)
	}
	return nil
}

// Close closes the connections; Watch returns store.ErrClosed and every
// later call fails with it.
func (s *Store) Close() error {
	var err error
	s.once.Do(func() {
		s.closed.Store(true)
		close(s.done)
		err = s.c.Close()
		s.b.wg.Wait()
	})
	return err
}

// fail wraps err with the operation's name and logs it, rate-limited: a Redis
// outage makes every request fail, which must not flood the log.
func (s *Store) fail(op string, err error) error {
	if s.closed.Load() {
		return fmt.Errorf("redisstore: %s: %w", op, store.ErrClosed) // closed mid-call
	}
	err = fmt.Errorf("redisstore: %s: %w", op, err)
	if errors.Is(err, context.Canceled) {
		return err
	}
	if ok, n := s.errs.Allow("error", time.Now()); ok {
		s.log.Error("redis store", "err", err, "suppressed", n)
	}
	return err
}
