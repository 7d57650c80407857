// Package replay runs a recorded audit trail (package audit, the JSON-lines
// audit.file) through the jails of another configuration, in a throwaway
// embedded store (store/memstore) whose clock is driven by the events'
// times, and tells how its bans differ from the recorded ones: the what-if
// of `mailguard replay`.
//
// What the trail holds decides what a replay can know. Failures are
// replayed through the real guard (guard.Guard): a failure of a client the
// new config already refuses is counted as refused, not as a failure (the
// front end would have refused it before the password was tried). A
// recorded refusal is an attempt whose outcome the trail does not know: it
// is refused again or, when the new config does not refuse it, counted as
// let through. Successful logins are not in the trail, so known devices
// come from Options.Known; wrong-password hashes are not either, so jails
// with distinct_passwords count every failure (an upper bound). Bans and
// unbans made by an administrator are applied as recorded; recorded jail
// bans are only compared.
package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
)

// Device is a known device: a login and an address of the prefix it logs
// in from (any address of it; the new config's prefix lengths apply).
type Device struct {
	User string
	Addr netip.Addr
}

// Options configure a Replay. Zero values are documented per field.
type Options struct {
	// Guard is the new configuration's policy: jails, ignoreip, prefixes,
	// recidive, known_device_ttl, the shared-address rule. Its Now, Log,
	// Metrics and Audit are replaced.
	Guard guard.Config
	// Since: events before it are skipped (zero: none are).
	Since time.Time
	// Known devices, made known at the first event's time.
	Known []Device
	// MaxBadLines stops the replay after that many bad lines (zero:
	// DefaultMaxBadLines); every bad line is reported either way.
	MaxBadLines int
	// RefusalsUnknown: a recorded refusal the new config does not refuse
	// is only counted as let through. Zero (false): it is replayed as a
	// failure of its front end's kind (Dovecot and web apps: a failed
	// login), as a refused client is one that failed maxretry times and
	// kept trying; Postfix refusals are only counted either way.
	RefusalsUnknown bool
	// Log receives the guard's lines (nil: discarded).
	Log *slog.Logger
}

// DefaultMaxBadLines is Options.MaxBadLines when zero.
const DefaultMaxBadLines = 1000

// Ban is a ban of the recorded run or of the replay.
type Ban struct {
	Subject string        `json:"subject"`
	Jail    string        `json:"jail"`
	Time    time.Time     `json:"time"`
	BanTime time.Duration `json:"-"`
	// BanTimeText is BanTime as a Go duration ("1h0m0s"), as in the trail.
	BanTimeText string `json:"bantime"`
	Nth         int    `json:"nth,omitempty"`
	// Addr and Protocol are of the failure that made the ban.
	Addr     string `json:"addr,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	ID       string `json:"id,omitempty"` // the recorded ban's audit id
}

// JailSummary is one jail's totals.
type JailSummary struct {
	Jail     string `json:"jail"`
	Recorded int    `json:"recorded"` // bans the recorded run made
	Replayed int    `json:"replayed"` // bans the replay made
	Added    int    `json:"added"`    // replayed bans without a recorded one
	Removed  int    `json:"removed"`  // recorded bans without a replayed one
	Failures int    `json:"failures"` // failures the jail counted in the replay
}

// KnownRefusal is a user the new config refuses from a known device.
type KnownRefusal struct {
	User    string    `json:"user"`
	Addr    string    `json:"addr"`
	Subject string    `json:"subject"` // the ban that refuses
	Jail    string    `json:"jail"`
	Time    time.Time `json:"time"`
	ID      string    `json:"id"` // the recorded event's id
}

// LineError is a line of the trail that could not be replayed.
type LineError struct {
	File string `json:"file,omitempty"` // "" when read from a stream
	Line int    `json:"line"`
	Err  string `json:"error"`
}

func (e LineError) Error() string {
	if e.File != "" {
		return fmt.Sprintf("%s line %d: %s", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Err)
}

// Result is what a replay found.
type Result struct {
	From     time.Time `json:"from"` // the first event replayed
	To       time.Time `json:"to"`   // the clock after the last
	Lines    int       `json:"lines"`
	Events   int       `json:"events"`   // events replayed (inside Since)
	Failures int       `json:"failures"` // recorded failures replayed
	// Refused: recorded failures and refusals the new config refuses;
	// LetThrough: recorded refusals it does not refuse (replayed as
	// failures unless Options.RefusalsUnknown).
	Refused    int `json:"refused"`
	LetThrough int `json:"let_through"`
	// NotReplayed counts events of kinds replay cannot run, by kind.
	NotReplayed map[string]int `json:"not_replayed,omitempty"`
	// Added: bans only the replay made; Removed: only the recorded run.
	Added   []Ban          `json:"added"`
	Removed []Ban          `json:"removed"`
	Jails   []JailSummary  `json:"jails"`
	Known   []KnownRefusal `json:"known_refused"`
	Bad     []LineError    `json:"bad_lines"`
}

// ErrTooManyBadLines stops a replay past Options.MaxBadLines.
var ErrTooManyBadLines = errors.New("replay: too many bad lines")

// Run replays the trail read from r.
func Run(ctx context.Context, r io.Reader, o Options) (*Result, error) {
	rp, err := New(o)
	if err != nil {
		return nil, err
	}
	defer rp.Close()
	if err := rp.Read(ctx, r); err != nil {
		return nil, err
	}
	return rp.Result(), nil
}

// Replay is one replay in progress: Read (or Event) feeds it, Result
// tells. It is not safe for concurrent use.
type Replay struct {
	o     Options
	clock atomic.Int64 // unix nanoseconds of the latest event
	st    *memstore.Store
	g     *guard.Guard
	known map[string]bool // "user|prefix" of known devices
	res   Result
	// recorded and replayed bans by subject and jail, in time order.
	recorded, replayed map[banKey][]Ban
	failures           map[string]int // jail → failures counted
	seeded             bool
	file               string // being read, for LineError
	line               int
}

type banKey struct{ subject, jail string }

// New returns a Replay of the policy o.Guard over an empty store.
func New(o Options) (*Replay, error) {
	if o.MaxBadLines <= 0 {
		o.MaxBadLines = DefaultMaxBadLines
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	rp := &Replay{o: o, known: map[string]bool{}, recorded: map[banKey][]Ban{}, replayed: map[banKey][]Ban{}, failures: map[string]int{}}
	rp.res.NotReplayed = map[string]int{}
	now := func() time.Time { return time.Unix(0, rp.clock.Load()).UTC() }
	st, err := memstore.Open(memstore.Options{Now: now, Log: o.Log})
	if err != nil {
		return nil, fmt.Errorf("replay: store: %w", err)
	}
	gc := o.Guard
	gc.Now, gc.Log, gc.Metrics, gc.Audit = now, o.Log, counter(rp.failures), nil
	g, err := guard.New(st, gc)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("replay: %w", err)
	}
	rp.st, rp.g = st, g
	return rp, nil
}

// Close releases the throwaway store.
func (rp *Replay) Close() error { return rp.st.Close() }

// counter is guard.Metrics counting failures per jail.
type counter map[string]int

func (c counter) Failure(jail, _ string) { c[jail]++ }
func (c counter) Banned(string)          {}

// Event replays one recorded event. An event that cannot be replayed (an
// invalid address) is an error and changes nothing.
func (rp *Replay) Event(ctx context.Context, e audit.Event) error {
	if !rp.o.Since.IsZero() && e.Time.Before(rp.o.Since) {
		return nil
	}
	var a netip.Addr
	if e.Addr != "" {
		var err error
		if a, err = netip.ParseAddr(e.Addr); err != nil {
			return fmt.Errorf("record %s: invalid address %q", e.ID, e.Addr)
		}
	}
	if (e.Kind == audit.KindFailure || e.Kind == audit.KindRefusal) && !a.IsValid() {
		return fmt.Errorf("record %s: %s without an address", e.ID, e.Kind)
	}
	// The clock never goes back: the recorder writes in batches, so
	// records of concurrent requests may be a little out of order.
	if t := e.Time.UnixNano(); t > rp.clock.Load() {
		rp.clock.Store(t)
	}
	if err := rp.seed(ctx, e); err != nil {
		return err
	}
	if rp.res.From.IsZero() {
		rp.res.From = e.Time.UTC()
	}
	rp.res.To = time.Unix(0, rp.clock.Load()).UTC()
	rp.res.Events++
	switch e.Kind {
	case audit.KindFailure:
		rp.res.Failures++
		return rp.failure(ctx, e, a)
	case audit.KindRefusal:
		if refused, err := rp.check(ctx, e, a); err != nil || refused {
			return err
		}
		rp.res.LetThrough++
		if !rp.o.RefusalsUnknown && (e.Source == "dovecot" || strings.HasPrefix(e.Source, "api:")) {
			e.Event = guard.EventAuthFailure
			return rp.count(ctx, e, a)
		}
	case audit.KindBan:
		if e.Source == "admin" {
			// A ban the new config cannot take (ignoreip, no such jail, a
			// prefix of another length) is counted, not an error.
			_, err := rp.g.Ban(ctx, target(e), e.Jail, banTime(e))
			if errors.Is(err, guard.ErrIgnored) || errors.Is(err, guard.ErrNoJail) || errors.Is(err, guard.ErrTarget) {
				rp.res.NotReplayed["admin ban"]++
				return nil
			}
			if err != nil {
				return fmt.Errorf("record %s: admin ban: %w", e.ID, err)
			}
			return nil
		}
		b := Ban{Subject: subjectOf(e), Jail: e.Jail, Time: e.Time.UTC(), BanTime: banTime(e), Nth: e.Nth,
			Addr: e.Addr, Protocol: e.Protocol, ID: e.ID}
		k := banKey{b.Subject, b.Jail}
		rp.recorded[k] = append(rp.recorded[k], b)
	case audit.KindUnban:
		if _, err := rp.g.Unban(ctx, target(e)); err != nil {
			return fmt.Errorf("record %s: unban: %w", e.ID, err)
		}
	default:
		rp.res.NotReplayed[string(e.Kind)]++
	}
	return nil
}

// seed makes the known devices known at the first event's time; users are
// hashed as the trail's are.
func (rp *Replay) seed(ctx context.Context, e audit.Event) error {
	if rp.seeded {
		return nil
	}
	rp.seeded = true
	for _, d := range rp.o.Known {
		u := rp.user(d.User, e.User)
		if err := rp.g.Succeed(ctx, d.Addr, u); err != nil {
			return fmt.Errorf("replay: known device: %w", err)
		}
		rp.known[rp.deviceKey(u, d.Addr)] = true
	}
	return nil
}

// user is login as the trail names users: hashed when like is a hash.
func (rp *Replay) user(login, like string) string {
	if strings.HasPrefix(like, "h:") && !strings.HasPrefix(login, "h:") {
		return audit.UserHash(login)
	}
	return guard.NormUser(login)
}

func (rp *Replay) deviceKey(user string, a netip.Addr) string {
	p := rp.o.Guard.Prefixes
	bits := p.IPv6
	if a = guard.Canon(a); a.Is4() {
		bits = p.IPv4
	}
	if bits == 0 {
		bits = guard.DefaultPrefixes.IPv6
		if a.Is4() {
			bits = guard.DefaultPrefixes.IPv4
		}
	}
	pr, _ := a.Prefix(bits)
	return guard.NormUser(user) + "|" + pr.String()
}

// check asks whether the new config refuses the client of e; a refusal of
// a known device is recorded in Result.Known.
func (rp *Replay) check(ctx context.Context, e audit.Event, a netip.Addr) (bool, error) {
	v, err := rp.g.CheckLogin(ctx, a, e.User)
	if err != nil {
		return false, fmt.Errorf("record %s: check: %w", e.ID, err)
	}
	if !v.Refused {
		return false, nil
	}
	rp.res.Refused++
	if e.User != "" && rp.known[rp.deviceKey(e.User, a)] {
		jail := ""
		if b, ok := rp.banOf(ctx, v.Banned); ok {
			jail = b.Jail
		}
		rp.res.Known = append(rp.res.Known, KnownRefusal{User: e.User, Addr: a.String(), Subject: v.Banned,
			Jail: jail, Time: e.Time.UTC(), ID: e.ID})
	}
	return true, nil
}

func (rp *Replay) banOf(ctx context.Context, subject string) (store.Ban, bool) {
	bans, err := rp.st.Bans(ctx)
	if err != nil {
		return store.Ban{}, false
	}
	for _, b := range bans {
		if b.Subject == subject {
			return b, true
		}
	}
	return store.Ban{}, false
}

// failure replays a recorded failure: refused if the new config refuses
// the client, else counted in its jails.
func (rp *Replay) failure(ctx context.Context, e audit.Event, a netip.Addr) error {
	if refused, err := rp.check(ctx, e, a); err != nil || refused {
		return err
	}
	return rp.count(ctx, e, a)
}

// count counts a failure the new config does not refuse in its jails.
func (rp *Replay) count(ctx context.Context, e audit.Event, a netip.Addr) error {
	var bans []store.Ban
	var err error
	switch {
	case strings.HasPrefix(e.Source, "log:"):
		// A log filter's match counts in the jails that named the log.
		for _, j := range e.Jails {
			if _, ok := rp.g.Jail(j); !ok {
				continue
			}
			b, _, err := rp.g.LogFailure(ctx, j, a, e.User, e.Source)
			if err != nil {
				return fmt.Errorf("record %s: %w", e.ID, err)
			}
			bans = append(bans, b...)
		}
	case e.Event == guard.EventAuthFailure && strings.HasPrefix(e.Source, "api:"):
		// A web app's event (api:APP), or a refusal of a check token
		// (api:NAME, which need not be an app name: "line 3").
		app := strings.TrimPrefix(e.Source, "api:")
		if !guard.ValidApp(app) {
			app = ""
		}
		var r guard.Reported
		r, err = rp.g.Report(ctx, guard.Report{Kind: e.Event, Addr: a, User: e.User, App: app})
		bans = r.Bans
	case e.Event == guard.EventAuthFailure:
		bans, err = rp.g.Fail(ctx, a, e.User, e.Protocol, "")
	case e.Event == guard.EventAbuse:
		bans, err = rp.g.Abuse(ctx, a, e.Reason)
	default:
		rp.res.NotReplayed[string(e.Kind)+" "+e.Event]++
		return nil
	}
	if err != nil {
		return fmt.Errorf("record %s: %w", e.ID, err)
	}
	for _, b := range bans {
		rb := Ban{Subject: b.Subject, Jail: b.Jail, Time: b.Created.UTC(), BanTime: b.Expires.Sub(b.Created),
			Nth: b.Nth, Addr: a.String(), Protocol: e.Protocol}
		k := banKey{b.Subject, b.Jail}
		rp.replayed[k] = append(rp.replayed[k], rb)
	}
	return nil
}

// subjectOf is the subject of a recorded ban as the replay names it: the
// trail's user in place of the login when the trail hashes users.
func subjectOf(e audit.Event) string {
	s := e.Subject
	if !strings.HasPrefix(e.User, "h:") {
		return s
	}
	if login, ok := strings.CutPrefix(s, "user:"); ok && login != e.User {
		return "user:" + e.User
	}
	if rest, ok := strings.CutPrefix(s, "user+net:"); ok {
		if i := strings.LastIndexByte(rest, '|'); i >= 0 {
			return "user+net:" + e.User + rest[i:]
		}
	}
	return s
}

// target is what guard.Ban and guard.Unban take for a recorded subject.
func target(e audit.Event) string {
	if p, ok := guard.SubjectPrefix(e.Subject); ok {
		if p.IsSingleIP() {
			return p.Addr().String()
		}
		return p.String()
	}
	return strings.TrimPrefix(subjectOf(e), "user:")
}

func banTime(e audit.Event) time.Duration {
	d, _ := time.ParseDuration(e.BanTime)
	return d
}

// Result compares the bans and returns what the replay found so far.
func (rp *Replay) Result() *Result {
	res := rp.res
	res.NotReplayed = rp.res.NotReplayed
	if len(res.NotReplayed) == 0 {
		res.NotReplayed = nil
	}
	res.Added, res.Removed, res.Jails = []Ban{}, []Ban{}, nil
	if res.Known == nil {
		res.Known = []KnownRefusal{}
	}
	if res.Bad == nil {
		res.Bad = []LineError{}
	}
	sums := map[string]*JailSummary{}
	sum := func(j string) *JailSummary {
		s := sums[j]
		if s == nil {
			s = &JailSummary{Jail: j, Failures: rp.failures[j]}
			sums[j] = s
		}
		return s
	}
	for _, j := range rp.g.Jails() {
		sum(j.Name)
	}
	keys := map[banKey]bool{}
	for k := range rp.recorded {
		keys[k] = true
	}
	for k := range rp.replayed {
		keys[k] = true
	}
	for k := range keys {
		rec, rep := rp.recorded[k], rp.replayed[k]
		s := sum(k.jail)
		s.Recorded += len(rec)
		s.Replayed += len(rep)
		// The i-th ban of a subject in a jail matches the i-th recorded:
		// the excess of either side is the difference.
		for i := len(rec); i < len(rep); i++ {
			res.Added = append(res.Added, rep[i])
			s.Added++
		}
		for i := len(rep); i < len(rec); i++ {
			res.Removed = append(res.Removed, rec[i])
			s.Removed++
		}
	}
	for _, l := range [][]Ban{res.Added, res.Removed} {
		for i := range l {
			l[i].BanTimeText = l[i].BanTime.String()
		}
		sort.Slice(l, func(i, j int) bool {
			if !l[i].Time.Equal(l[j].Time) {
				return l[i].Time.Before(l[j].Time)
			}
			if l[i].Subject != l[j].Subject {
				return l[i].Subject < l[j].Subject
			}
			return l[i].Jail < l[j].Jail
		})
	}
	for _, s := range sums {
		res.Jails = append(res.Jails, *s)
	}
	sort.Slice(res.Jails, func(i, j int) bool { return res.Jails[i].Jail < res.Jails[j].Jail })
	return &res
}
