package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/internal/dedup"
	"github.com/mailguard/mailguard/logwatch"
	"github.com/mailguard/mailguard/logwatch/filter"
	"github.com/mailguard/mailguard/metrics"
	"github.com/mailguard/mailguard/store"
)

// The log wiring: every jails.NAME.logs entry becomes a feed (a filter for
// one jail) on a source (one Follower per file, one Journal per set of
// matches, however many jails read it), and each match counts in the jail
// that named the log, through guard.LogFailure.

// logGuard is what the log wiring needs of guard.
type logGuard interface {
	LogFailure(ctx context.Context, jail string, a netip.Addr, user, source string) ([]store.Ban, bool, error)
}

// examiner is what a feed needs of a filter: a line in, the failures it
// completes out. A single-line filter reports a line's own failure; a
// multi-line filter (<F-MLFID>, maxlines) keeps state per source and
// reports a failure when a later line completes it, so each feed has its
// own examiner (a *filter.Tracker), used from its source's goroutine only.
type examiner interface {
	Line(text string, now time.Time) []filter.Failure
}

// counter is the one method the wiring uses of a Prometheus counter.
type counter interface{ Inc() }

// logMetrics is what the wiring tells the metrics (metrics.Registry).
type logMetrics interface {
	logLines(source string) counter
	logMatches(source, jail string) counter
	logSourceUp(source string, up func() bool)
	storeError()
}

// logSource is one source and the feeds that read it.
type logSource struct {
	name     string // log:PATH or journal:MATCHES
	src      logwatch.Source
	startErr error
	feeds    []*logFeed
	lines    counter
}

// logFeed is one jail's filter on a source.
type logFeed struct {
	jail    string
	label   string // the source with its filter: log:/var/log/mail.log:postfix
	ex      examiner
	user    bool // the jail's key takes the <F-USER> of a match
	matches counter
}

// logPlan is what the config's logs resolve to at start.
type logPlan struct {
	sources []*logSource
	byJail  map[string][]string // jail → feed labels, for status
	notes   []string            // sources not read, said once at start
}

// planLogs resolves the enabled jails' logs: an entry with both a path and
// a journal reads the file if it exists, else the journal if journalctl is
// installed, else nothing (said once at start). Filters were validated
// with the config; loading them again cannot fail but is checked.
func planLogs(c config.Config, lookPath func(string) (string, error)) (*logPlan, error) {
	p := &logPlan{byJail: map[string][]string{}}
	byName := map[string]*logSource{}
	for _, jn := range slices.Sorted(maps.Keys(c.Jails)) {
		j := c.Jails[jn]
		if !j.Enabled {
			continue
		}
		for _, l := range j.Logs {
			name, journal := "", []string(nil)
			switch {
			case l.Path != "" && l.Journal != "":
				_, err := os.Stat(l.Path)
				_, jerr := lookPath("journalctl")
				switch {
				case err == nil || !errors.Is(err, fs.ErrNotExist):
					name = "log:" + l.Path
				case jerr == nil:
					journal = strings.Fields(l.Journal)
					name = "journal:" + strings.Join(journal, " ")
				default:
					p.notes = append(p.notes, fmt.Sprintf("jail %s reads no log: %s does not exist and journalctl is not installed", jn, l.Path))
					continue
				}
			case l.Path != "":
				name = "log:" + l.Path
			default:
				journal = strings.Fields(l.Journal)
				name = "journal:" + strings.Join(journal, " ")
			}
			f, err := filter.Open(l.Filter, l.Mode, nil)
			if err != nil {
				return nil, fmt.Errorf("jails.%s.logs: %w", jn, err)
			}
			s := byName[name]
			if s == nil {
				s = &logSource{name: name}
				if journal != nil {
					s.src = &logwatch.Journal{Matches: journal, StateDir: c.StateDir, Backlog: c.Logwatch.Backlog.D()}
				} else {
					s.src = &logwatch.Follower{Path: strings.TrimPrefix(name, "log:"), StateDir: c.StateDir, Backlog: c.Logwatch.Backlog.D()}
				}
				byName[name] = s
				p.sources = append(p.sources, s)
			}
			label := name + ":" + l.Filter
			if l.Mode != "" {
				label += "[mode=" + l.Mode + "]"
			}
			key := guard.Key(j.Key)
			s.feeds = append(s.feeds, &logFeed{jail: jn, label: label, ex: f.NewTracker(), user: key == guard.KeyUser || key == guard.KeyUserPrefix})
			p.byJail[jn] = append(p.byJail[jn], label)
		}
	}
	return p, nil
}

// logRunner feeds the lines of the planned sources to guard.
type logRunner struct {
	plan    *logPlan
	g       logGuard
	log     *slog.Logger
	timeout time.Duration // per guard call: store.timeout
	now     func() time.Time
	errLog  dedup.Limiter // store errors: once every 5s per source
	metrics logMetrics
}

// start starts every source; one that cannot be read is logged and left
// in /healthz, never stops the daemon.
func (r *logRunner) start(ctx context.Context, stateDir string) {
	if r.now == nil {
		r.now = time.Now
	}
	for _, n := range r.plan.notes {
		r.log.Warn(n)
	}
	if len(r.plan.sources) == 0 {
		return
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		r.log.Warn("logwatch: state_dir: positions are not kept across restarts", "err", err)
	}
	for _, s := range r.plan.sources {
		s.lines = r.metrics.logLines(s.name)
		for _, f := range s.feeds {
			f.matches = r.metrics.logMatches(f.label, f.jail)
		}
		s.startErr = s.src.Start(ctx, func(l logwatch.Line) { r.line(ctx, s, l) })
		r.metrics.logSourceUp(s.name, func() bool { return s.health() == nil })
		jails := make([]string, len(s.feeds))
		for i, f := range s.feeds {
			jails[i] = f.jail + " " + f.label
		}
		if s.startErr != nil {
			r.log.Error("log source cannot be read", "source", s.name, "feeds", strings.Join(jails, ", "), "err", s.startErr)
			continue
		}
		if err := s.src.Health(); err != nil {
			r.log.Warn("log source cannot be read yet", "source", s.name, "feeds", strings.Join(jails, ", "), "err", err)
			continue
		}
		r.log.Info("log source", "source", s.name, "feeds", strings.Join(jails, ", "))
	}
}

func (s *logSource) health() error {
	if s.startErr != nil {
		return s.startErr
	}
	return s.src.Health()
}

// health is nil when every source is read, else names the first that is
// not (for /healthz).
func (r *logRunner) health() error {
	for _, s := range r.plan.sources {
		if err := s.health(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// stop stops the sources (each saves its position) and joins them.
func (r *logRunner) stop() {
	for _, s := range r.plan.sources {
		s.src.Stop()
	}
}

// line runs one line through the feeds of its source, in order: a ban is in
// the store before the next line is read.
func (r *logRunner) line(ctx context.Context, s *logSource, l logwatch.Line) {
	s.lines.Inc()
	if l.Truncated {
		return // never matched: a cut line could match where the whole one would not
	}
	text := string(l.Text)
	for _, f := range s.feeds {
		for _, res := range f.ex.Line(text, r.now()) {
			f.matches.Inc()
			user := ""
			if f.user {
				user = res.User
			}
			cctx, cancel := context.WithTimeout(ctx, r.timeout)
			_, counted, err := r.g.LogFailure(cctx, f.jail, res.Host, user, f.label)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				r.metrics.storeError()
				if ok, n := r.errLog.Allow(s.name, r.now()); ok {
					r.log.Warn("log match not counted", "source", f.label, "jail", f.jail, "err", err, "suppressed", n)
				}
				continue
			}
			r.log.Debug("log match", "source", f.label, "jail", f.jail, "remote", res.Host, "counted", counted)
		}
	}
}

// regLogMetrics adapts metrics.Registry.
type regLogMetrics struct{ r *metrics.Registry }

func (m regLogMetrics) logLines(source string) counter         { return m.r.LogLines(source) }
func (m regLogMetrics) logMatches(source, jail string) counter { return m.r.LogMatches(source, jail) }
func (m regLogMetrics) logSourceUp(source string, up func() bool) {
	m.r.LogSourceUp(source, up)
}
func (m regLogMetrics) storeError() { m.r.StoreError("logs") }

// countOnceNotes says, for each jail that takes failed logins from both the
// Dovecot hook and a log, how it counts them once.
func countOnceNotes(c config.Config, log *slog.Logger) {
	for _, jn := range slices.Sorted(maps.Keys(c.Jails)) {
		j := c.Jails[jn]
		if j.Enabled && len(j.Logs) > 0 && slices.Contains(j.Events, guard.EventAuthFailure) {
			log.Info("count once: this jail takes failed logins from the Dovecot hook and from its logs; a log match and a hook report of the same address within findtime are one failure",
				"jail", jn, "findtime", j.FindTime)
		}
	}
}
