package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/mailguard/mailguard/admin"
	"github.com/mailguard/mailguard/authhook"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/internal/listen"
	"github.com/mailguard/mailguard/metrics"
	"github.com/mailguard/mailguard/policyd"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
	"github.com/mailguard/mailguard/store/redisstore"
)

func serveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "run the daemon",
		Args:  usageArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.load()
			if err != nil {
				return err
			}
			if g.socket != "" {
				c.Admin.Socket = g.socket
			}
			return serve(cmd.Context(), c, newLogger(c.Log))
		},
	}
}

func newLogger(c config.Log) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// jails turns the enabled jails of c into guard's, sorted by name; logs
// names each jail's log feeds (planLogs).
func jails(c config.Config, logs map[string][]string) []guard.Jail {
	var out []guard.Jail
	for _, name := range slices.Sorted(maps.Keys(c.Jails)) {
		j := c.Jails[name]
		if !j.Enabled {
			continue
		}
		gj := guard.Jail{
			Name: name, Events: j.Events, Protocols: j.Protocols, Key: guard.Key(j.Key),
			MaxRetry: j.MaxRetry, FindTime: j.FindTime.D(), BanTime: j.BanTime.D(),
			Action: guard.Action(j.Action), DistinctPasswords: j.DistinctPasswords, Apps: j.Apps, Logs: logs[name],
		}
		for _, p := range j.Ports {
			n, _ := config.ParsePort(p) // validated
			gj.Ports = append(gj.Ports, n)
		}
		for i, p := range gj.Protocols {
			gj.Protocols[i] = strings.ToLower(p)
		}
		out = append(out, gj)
	}
	return out
}

// policy is the jail policy of c that serve and replay give guard.New:
// the jails (logs names their log feeds, planLogs'; nil: none), ignoreip,
// prefixes, recidive, known devices and the shared-address rule. serve
// adds the daemon's own parts (log, metrics, audit, TOTP, blast-radius
// guard, widening).
func policy(c config.Config, logs map[string][]string) guard.Config {
	ignore, _ := config.ParseIgnore(c.IgnoreIP) // validated
	return guard.Config{
		Jails: jails(c, logs), Ignore: ignore, Prefixes: guard.Prefixes{IPv4: c.Prefix.IPv4, IPv6: c.Prefix.IPv6},
		Recidive:       store.Recidive{Window: c.Recidive.Window.D(), Factor: c.Recidive.Factor, MaxTime: c.Recidive.MaxTime.D()},
		KnownDeviceTTL: c.KnownDeviceTTL.D(),
		Shared:         guard.SharedRule{MinUsers: c.Safety.SharedAddress.MinUsers, Window: c.Safety.SharedAddress.Window.D()},
	}
}

func openStore(ctx context.Context, c config.Config, log *slog.Logger) (store.Store, error) {
	switch c.Store.Backend {
	case "redis":
		r := c.Store.Redis
		host, _ := os.Hostname()
		return redisstore.Open(ctx, redisstore.Options{
			URL: r.URL, Addrs: r.Addrs, MasterName: r.MasterName, Username: r.Username, Password: r.Password,
			PoolSize: r.PoolSize, DialTimeout: r.DialTimeout.D(), ReadTimeout: r.ReadTimeout.D(),
			WriteTimeout: r.WriteTimeout.D(), Prefix: r.Prefix, Log: log, Node: host,
		})
	default:
		if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
			return nil, fmt.Errorf("state_dir: %w", err)
		}
		st, err := memstore.Open(memstore.Options{Dir: c.StateDir, Log: log})
		if errors.Is(err, memstore.ErrCorrupt) {
			// Exit 2: the unit's RestartPreventExitStatus=2 stops a restart loop.
			return nil, &exitError{exitUsage, fmt.Errorf("%w\nthe state in %s is damaged: `mailguard state check` lists what; `mailguard state repair` (daemon stopped) moves the damaged lines aside and says how many bans are lost", err, c.StateDir)}
		}
		return st, err
	}
}

// serve runs the daemon until ctx ends.
func serve(ctx context.Context, c config.Config, log *slog.Logger) error {
	checkNoFile(c, log)
	st, err := openStore(ctx, c, log)
	if err != nil {
		return err
	}
	defer st.Close()

	plan, err := planLogs(c, exec.LookPath)
	if err != nil {
		return &exitError{exitUsage, err}
	}

	var g *guard.Guard
	reg := metrics.New(func(ctx context.Context) (map[string]int, error) {
		bans, err := st.Bans(ctx)
		if err != nil {
			return nil, err
		}
		m := map[string]int{}
		for _, j := range g.Jails() {
			m[j.Name] = 0
		}
		for _, b := range bans {
			m[b.Jail]++
		}
		return m, nil
	})
	// The audit trail (audit.*): a background recorder, closed last.
	rec, err := auditRecorder(c, st, jails(c, plan.byJail), log)
	if err != nil {
		return err
	}
	var auditor guard.Auditor
	if rec != nil {
		defer rec.Close()
		auditor = rec
	}
	gc := policy(c, plan.byJail)
	gc.Log, gc.Metrics, gc.Audit = log, reg, auditor
	gc.SecondFactor, gc.MaxBansPerMinute, gc.Widen = secondFactor(c), c.Safety.MaxBansPerMinute, widen(c)
	g, err = guard.New(st, gc)
	if err != nil {
		return err
	}
	// TOTP (totp.go): nil when totp.enabled is false.
	tsvc, err := openTOTP(ctx, c, st, g, log)
	if err != nil {
		return err
	}
	pages, err := totpPages(tsvc, c, log)
	if err != nil {
		return err
	}

	reg.WatchHeld(func(ctx context.Context) (int, error) {
		st, err := g.Holding(ctx)
		return len(st.Held), err
	})

	apiHeader, err := dovecotAuth(c, log)
	if err != nil {
		return &exitError{exitUsage, err}
	}

	failOpen := c.Store.FailMode == "open"
	pf := &policyd.Server{
		Guard: postfixGuard{g}, ReplyRef: rec != nil && c.Audit.Reference, RejectAction: c.Postfix.RejectAction, DeferAction: c.Postfix.DeferAction,
		FailOpen: failOpen, Timeout: c.Store.Timeout.D(), IdleTimeout: c.Postfix.IdleTimeout.D(),
		MaxConns: c.Postfix.MaxConns, Log: log.With("frontend", "postfix"),
		Metrics: metrics.Frontend{R: reg, Name: "postfix"},
	}
	dv := &authhook.Server{
		Guard: dovecotGuard{g}, APIHeader: apiHeader, RejectMsg: c.Dovecot.RejectMsg,
		RejectUserMsg: c.Dovecot.RejectMsgUser, SecondFactorMsg: c.TOTPRejectMsg(),
		ReplyRef: rec != nil && c.Audit.Reference,
		Tarpit:   authhook.Tarpit{Start: c.Dovecot.Tarpit.Start, Base: c.Dovecot.Tarpit.Base.D(), Max: c.Dovecot.Tarpit.Max.D()},
		FailOpen: failOpen, Timeout: c.Store.Timeout.D(), MaxConns: c.Dovecot.MaxConns,
		ReadTimeout: c.Dovecot.Timeout.D(),
		Log:         log.With("frontend", "dovecot"), Metrics: metrics.Frontend{R: reg, Name: "dovecot"},
	}
	adm := &admin.Server{Guard: g, Log: log.With("frontend", "admin"), Kernel: kernelLister(c), FirewallBackend: c.Firewall.Backend}
	apiSrv, err := apiServer(c, g, reg, log) // nil: api off
	if err != nil {
		return err
	}
	lw := &logRunner{plan: plan, g: g, log: log.With("frontend", "logs"), timeout: c.Store.Timeout.D(), metrics: regLogMetrics{reg}}
	ms := &metrics.Server{Registry: reg, Health: heldHealth(joinHealth(health(st), lw.health), g), Pprof: c.Metrics.Pprof, Log: log.With("frontend", "metrics")}
	if tsvc != nil {
		adm.TOTP, adm.TOTPURL = tsvc, c.TOTP.URL
	}

	// Bind every listener before serving: a taken port stops the start
	// with a clear error instead of a half-running daemon.
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	bind := func(key string, f func() (net.Listener, error)) (net.Listener, error) {
		l, err := f()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		listeners = append(listeners, l)
		return l, nil
	}
	pfL, err := bind("postfix.listen", func() (net.Listener, error) {
		return listen.Listen(c.Postfix.Listen, policyd.DefaultSocketMode, "postfix")
	})
	if err != nil {
		return err
	}
	dvL, err := bind("dovecot.listen", func() (net.Listener, error) { return listen.Listen(c.Dovecot.Listen, 0o660, "dovecot") })
	if err != nil {
		return err
	}
	adminL, err := bind("admin.socket", func() (net.Listener, error) { return admin.Listen(c.Admin.Socket) })
	if err != nil {
		return err
	}
	var pagesL net.Listener
	if pages != nil {
		if pagesL, err = bind("totp.listen", func() (net.Listener, error) { return listen.Listen(c.TOTP.Listen, 0o660, "") }); err != nil {
			return err
		}
	}
	var metricsL net.Listener
	if c.Metrics.Listen != "" {
		if metricsL, err = bind("metrics.listen", func() (net.Listener, error) { return net.Listen("tcp", c.Metrics.Listen) }); err != nil {
			return err
		}
	}

	var apiL net.Listener
	if apiSrv != nil {
		// A unix socket for nginx: mode 0660, group www-data (Debian's nginx).
		if apiL, err = bind("api.listen", func() (net.Listener, error) { return listen.Listen(c.API.Listen, 0o660, "www-data") }); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	run := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("%s: %w", name, err))
			}
		}()
	}
	stopFW, err := startFirewall(ctx, c, g, st, reg, log, run)
	if err != nil {
		closeAll()
		return err
	}
	countOnceNotes(c, log)
	lw.start(ctx, c.StateDir)
	run("safety.max_bans_per_minute", func() error { drainHeld(ctx, g, log); return nil })
	run("postfix.listen", func() error { return pf.Serve(pfL) })
	run("dovecot.listen", func() error { return dv.Serve(dvL) })
	run("admin.socket", func() error { return adm.Serve(adminL) })
	if metricsL != nil {
		run("metrics.listen", func() error { return ms.Serve(metricsL) })
	}
	apiAddr := "off"
	if apiSrv != nil {
		apiAddr = c.API.Listen
		run("api.listen", func() error { return apiSrv.Serve(apiL) })
	}
	if pagesL != nil {
		run("totp.listen", func() error { return pages.Serve(pagesL) })
	}

	log.Info("mailguard started", "version", Version, "postfix", c.Postfix.Listen, "dovecot", c.Dovecot.Listen,
		"admin", c.Admin.Socket, "metrics", c.Metrics.Listen, "store", c.Store.Backend, "state_dir", c.StateDir,
		"firewall", c.Firewall.Backend, "jails", len(g.Jails()), "api", apiAddr, "log_sources", len(plan.sources))
	<-ctx.Done()
	cause := context.Cause(ctx)
	log.Info("mailguard stopping", "reason", cause)
	// Requests in flight get their answers; idle connections close at once
	// (Postfix and Dovecot reconnect to the next daemon).
	stopCtx, stopCancel := context.WithTimeout(context.Background(), shutdownTimeout)
	var fe sync.WaitGroup
	fe.Go(func() { pf.Shutdown(stopCtx) })
	fe.Go(func() { dv.Shutdown(stopCtx) })
	fe.Wait()
	stopCancel()
	lw.stop()
	adm.Close()
	ms.Close()
	if apiSrv != nil {
		apiSrv.Close()
	}
	if pages != nil {
		pages.Close()
	}
	if stopFW != nil {
		stopFW()
	}
	wg.Wait()
	os.Remove(c.Admin.Socket)
	if errors.Is(cause, context.Canceled) {
		return nil
	}
	return cause
}

// shutdownTimeout bounds how long a stopping daemon lets the front ends
// answer the requests in flight: above the store timeout, below systemd's
// TimeoutStopSec.
const shutdownTimeout = 5 * time.Second

// Fail: Dovecot is told nothing of the bans a failure makes.
func (d dovecotGuard) Fail(ctx context.Context, a netip.Addr, user, protocol, pwhash string) error {
	_, err := d.Guard.Fail(ctx, a, user, protocol, pwhash)
	return err
}

// dovecotAuth returns the API header Dovecot must send (see
// dovecotAPIHeader), making the key on the first start, and says where it
// comes from, never what it is.
func dovecotAuth(c config.Config, log *slog.Logger) (string, error) {
	path := dovecotKeyPath(c)
	_, statErr := os.Stat(path)
	h, err := dovecotAPIHeader(c, true)
	switch {
	case err != nil:
		return "", fmt.Errorf("dovecot.api_header is empty and %w (or set dovecot.api_header)", err)
	case h == "":
		log.Warn("dovecot.insecure_no_auth is true: any process that reaches dovecot.listen can report failed logins (and ban any address) or successful ones (and lift user bans); set Dovecot's auth_policy_server_api_header and remove insecure_no_auth")
	case strings.TrimSpace(c.Dovecot.APIHeader) != "":
		log.Info("dovecot requests must carry dovecot.api_header")
	case statErr != nil:
		log.Warn("made a new Dovecot API key: set Dovecot's auth_policy_server_api_header = Authorization: Bearer <the key in the file> (mailguard setup dovecot prints the line); until then Dovecot's requests get 401 and logins are not guarded",
			"file", path)
	default:
		log.Info("dovecot requests must carry Authorization: Bearer <the key in the file>", "file", path)
	}
	return h, nil
}

// health reports the store's health for /healthz when the store can tell.
func health(st store.Store) func(context.Context) error {
	p, ok := st.(interface{ Ping(context.Context) error })
	if !ok {
		return nil
	}
	return func(ctx context.Context) error {
		if err := p.Ping(ctx); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		return nil
	}
}

// joinHealth is the first error of the checks that are not nil.
func joinHealth(store func(context.Context) error, logs func() error) func(context.Context) error {
	return func(ctx context.Context) error {
		if store != nil {
			if err := store(ctx); err != nil {
				return err
			}
		}
		return logs()
	}
}

// dovecotGuard gives authhook the verdict in its own type: front ends do not
// import guard.
type dovecotGuard struct{ *guard.Guard }

func (d dovecotGuard) Check(ctx context.Context, a netip.Addr, user string) (authhook.CheckResult, error) {
	v, err := d.CheckLogin(ctx, a, user)
	return authhook.CheckResult{Refused: v.Refused, Banned: v.Banned, ByUser: v.ByUser, Failures: v.Failures, UserFailures: v.UserFailures}, err
}

// CheckAfterAuth is Dovecot's after-auth check: with totp.enabled it also
// refuses an enrolled user from an unapproved device.
func (d dovecotGuard) CheckAfterAuth(ctx context.Context, a netip.Addr, user, protocol string) (authhook.CheckResult, error) {
	v, err := d.Guard.CheckAfterAuth(ctx, a, user, protocol)
	return authhook.CheckResult{Refused: v.Refused, Banned: v.Banned, ByUser: v.ByUser, Failures: v.Failures,
		UserFailures: v.UserFailures, SecondFactor: v.SecondFactor}, err
}
