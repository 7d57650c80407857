// Package metrics exposes mailguard's Prometheus metrics on /metrics and its
// health on /healthz. It implements the small Metrics interfaces that guard
// and the front ends declare.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/mailguard/mailguard/internal/listen"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry holds the metrics of one daemon.
type Registry struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	badRequests *prometheus.CounterVec
	failures    *prometheus.CounterVec
	bans        *prometheus.CounterVec
	storeErrors *prometheus.CounterVec
	fwErrors    *prometheus.CounterVec
	fwEntries   prometheus.Gauge

	logOnce sync.Once
	logs    *logVecs // made when the first log source asks

	heldOnce       sync.Once // held.go
	held, released *prometheus.CounterVec
}

// New returns a Registry. active, called at scrape time, returns the active
// bans per jail (nil: the gauge is not exported).
func New(active func(ctx context.Context) (map[string]int, error)) *Registry {
	r := &Registry{reg: prometheus.NewRegistry()}
	r.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailguard_requests_total", Help: "Policy requests answered, by front end (postfix, dovecot) and verdict.",
	}, []string{"frontend", "verdict"})
	r.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "mailguard_decision_seconds", Help: "Time from a request read to its answer written, by front end.",
		Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"frontend"})
	r.badRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailguard_bad_requests_total", Help: "Malformed or refused requests, by front end and reason.",
	}, []string{"frontend", "reason"})
	r.failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailguard_failures_total", Help: "Failures (events) counted, by jail and protocol.",
	}, []string{"jail", "protocol"})
	r.bans = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailguard_bans_total", Help: "Bans created on this node, by jail.",
	}, []string{"jail"})
	r.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailguard_store_errors_total", Help: "Store calls that failed or timed out, by front end; answered per store.fail_mode.",
	}, []string{"frontend"})
	r.fwErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailguard_firewall_errors_total", Help: "Firewall operations that failed, by operation (add, remove, sync, watch); retried at the next reconcile.",
	}, []string{"op"})
	r.fwEntries = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mailguard_firewall_entries", Help: "Kernel firewall entries after the last reconcile.",
	})
	r.reg.MustRegister(r.requests, r.latency, r.badRequests, r.failures, r.bans, r.storeErrors, r.fwErrors, r.fwEntries,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r.heldOnce.Do(r.initHeld) // exported from the start, at zero
	if active != nil {
		r.reg.MustRegister(&activeCollector{fn: active, desc: prometheus.NewDesc(
			"mailguard_bans_active", "Bans in force now, site-wide, by jail.", []string{"jail"}, nil)})
	}
	return r
}

type activeCollector struct {
	fn   func(ctx context.Context) (map[string]int, error)
	desc *prometheus.Desc
}

func (c *activeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *activeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := c.fn(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for jail, n := range m {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), jail)
	}
}

// Request counts one answered request.
func (r *Registry) Request(frontend, verdict string, d time.Duration) {
	r.requests.WithLabelValues(frontend, verdict).Inc()
	r.latency.WithLabelValues(frontend).Observe(d.Seconds())
}

// BadRequest counts a malformed request.
func (r *Registry) BadRequest(frontend, reason string) {
	r.badRequests.WithLabelValues(frontend, reason).Inc()
}

// StoreError counts a store failure seen by a front end.
func (r *Registry) StoreError(frontend string) { r.storeErrors.WithLabelValues(frontend).Inc() }

// Failure counts an event of jail (guard.Metrics).
func (r *Registry) Failure(jail, protocol string) { r.failures.WithLabelValues(jail, protocol).Inc() }

// Banned counts a ban of jail (guard.Metrics).
func (r *Registry) Banned(jail string) { r.bans.WithLabelValues(jail).Inc() }

// FirewallError counts a failed firewall operation (enforce.Metrics).
func (r *Registry) FirewallError(op string) { r.fwErrors.WithLabelValues(op).Inc() }

// FirewallEntries records the entries of the last reconcile (enforce.Metrics).
func (r *Registry) FirewallEntries(n int) { r.fwEntries.Set(float64(n)) }

// Frontend binds a Registry to one front end's label.
type Frontend struct {
	R    *Registry
	Name string
}

// Request counts one request of this front end.
func (f Frontend) Request(verdict string, d time.Duration) { f.R.Request(f.Name, verdict, d) }

// BadRequest counts a malformed request of this front end.
func (f Frontend) BadRequest(reason string) { f.R.BadRequest(f.Name, reason) }

// StoreError counts a store failure of this front end.
func (f Frontend) StoreError() { f.R.StoreError(f.Name) }

// Defaults used for zero fields of Server. A scraper (Prometheus, a health
// check) needs a connection or two; the cap keeps a flood of idle
// connections from using up the file descriptors the mail front ends need.
const (
	DefaultMaxConns          = 32
	DefaultReadHeaderTimeout = 5 * time.Second
	DefaultIdleTimeout       = time.Minute
	DefaultWriteTimeout      = 30 * time.Second
)

// Server is /metrics and /healthz. Serve it on a listener with Serve, or
// mount its Handler elsewhere. Set the fields before Serve.
type Server struct {
	Registry *Registry
	// Health returns nil when the node works; an error makes /healthz answer
	// 503 "degraded: ...". Nil: always healthy.
	Health func(ctx context.Context) error
	// Pprof adds Go's profiler (net/http/pprof) under /debug/pprof/. Off
	// by default: it shows the daemon's internals to whoever reaches the
	// listener.
	Pprof bool
	// MaxConns caps the open connections (Serve only): at the cap the
	// connection idle the longest is closed to make room. Zero:
	// DefaultMaxConns.
	MaxConns int
	// ReadHeaderTimeout bounds reading a request's headers, IdleTimeout a
	// kept-alive connection between requests, WriteTimeout a whole request
	// and its answer (Serve only). Zero: the defaults above.
	ReadHeaderTimeout, IdleTimeout, WriteTimeout time.Duration
	Log                                          *slog.Logger // nil: slog.Default()

	srv listen.HTTP
}

// Serve answers on l until Close, then returns nil. It closes l.
func (s *Server) Serve(l net.Listener) error {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	srv, cl := listen.NewServer(l, s.Handler(), listen.Limits{
		MaxConns:          listen.OrDefault(s.MaxConns, DefaultMaxConns),
		ReadHeaderTimeout: listen.OrDefault(s.ReadHeaderTimeout, DefaultReadHeaderTimeout),
		IdleTimeout:       listen.OrDefault(s.IdleTimeout, DefaultIdleTimeout),
		WriteTimeout:      listen.OrDefault(s.WriteTimeout, DefaultWriteTimeout),
	}, log)
	if s.Registry != nil {
		cl.Shed = func(string) { s.Registry.BadRequest("metrics", "too-many-conns") }
	}
	if err := s.srv.Serve(srv, cl); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// Close closes the listener and every connection; Serve returns.
func (s *Server) Close() error { return s.srv.Close() }

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	// ContinueOnError: with the store down, mailguard_bans_active cannot be
	// read, and the rest (the store error counters first) must still be served.
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Registry.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.Health != nil {
			ctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			if err := s.Health(ctx); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "degraded: %v\n", err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	if s.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Log sources (jails.NAME.logs): lines read per source, filter matches per
// source and jail, and whether each source is being read. Counters are
// made on first use and cached by the caller, so that a line costs one
// atomic add.
var (
	logLinesOpts = prometheus.CounterOpts{
		Name: "mailguard_log_lines_total", Help: "Log lines read, by source (log:PATH or journal:MATCHES).",
	}
	logMatchesOpts = prometheus.CounterOpts{
		Name: "mailguard_log_matches_total", Help: "Log lines a jail's filter matched, by source (log:PATH:FILTER) and jail; counted or not (ignoreip, count-once).",
	}
)

// LogLines returns the lines counter of a log source.
func (r *Registry) LogLines(source string) prometheus.Counter {
	return r.logVecs().lines.WithLabelValues(source)
}

// LogMatches returns the matches counter of a filter on a source, for jail.
func (r *Registry) LogMatches(source, jail string) prometheus.Counter {
	return r.logVecs().matches.WithLabelValues(source, jail)
}

// LogSourceUp exports mailguard_log_source_up{source}: 1 while up returns
// true (the source is being read), else 0; read at scrape time.
func (r *Registry) LogSourceUp(source string, up func() bool) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mailguard_log_source_up", Help: "1 while a log source is being read, 0 when it cannot be (missing, unreadable, journalctl not running).",
		ConstLabels: prometheus.Labels{"source": source},
	}, func() float64 {
		if up() {
			return 1
		}
		return 0
	}))
}

type logVecs struct {
	lines, matches *prometheus.CounterVec
}

func (r *Registry) logVecs() *logVecs {
	r.logOnce.Do(func() {
		r.logs = &logVecs{
			lines:   prometheus.NewCounterVec(logLinesOpts, []string{"source"}),
			matches: prometheus.NewCounterVec(logMatchesOpts, []string{"source", "jail"}),
		}
		r.reg.MustRegister(r.logs.lines, r.logs.matches)
	})
	return r.logs
}
