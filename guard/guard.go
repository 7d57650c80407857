// Package guard is mailguard's policy: the jails. It turns what the front ends
// report (a login failed, a recipient was sent) into failures counted in a
// store.Store, bans at each jail's maxretry within its sliding findtime, and
// escalates repeat offenders. It is the only package that knows the policy;
// front ends call it through small interfaces of their own.
package guard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/internal/dedup"
	"github.com/mailguard/mailguard/store"
)

// Event kinds a jail may count.
const (
	EventAuthFailure = "auth-failure" // a failed login reported by Dovecot
	EventRecipient   = "rcpt"         // a recipient sent by an authenticated user (Postfix)
	EventAbuse       = "smtp-abuse"   // SMTP abuse seen by Postfix (later sources)
)

// Events returns the event kinds a jail may count, in a new slice.
func Events() []string { return []string{EventAuthFailure, EventRecipient, EventAbuse} }

// Action says how far a jail's bans reach.
type Action string

const (
	ActionRefuse   Action = "refuse"   // in-protocol refusal only
	ActionFirewall Action = "firewall" // refuse and ban in the kernel firewall of every node
)

// Actions returns the known actions, in a new slice.
func Actions() []Action { return []Action{ActionRefuse, ActionFirewall} }

// Valid reports whether a is one of Actions.
func (a Action) Valid() bool { return slices.Contains(Actions(), a) }

// DefaultKnownDeviceTTL is how long a successful login makes (user, prefix)
// a known device when Config.KnownDeviceTTL is zero.
const DefaultKnownDeviceTTL = 30 * 24 * time.Hour

// ManualJail holds bans made by an administrator without --jail; its bans
// last ManualBanTime unless the administrator says otherwise.
const (
	ManualJail    = "manual"
	ManualBanTime = time.Hour
)

// Jail is one fail2ban-style jail.
type Jail struct {
	Name      string
	Events    []string // event kinds it counts
	Protocols []string // if not empty, only events of these protocols count (imap, pop3, smtp, ...)
	Key       Key
	MaxRetry  int
	FindTime  time.Duration
	// BanTime is the first ban's length. Zero: a rate limit, refusing (defer)
	// while over MaxRetry within FindTime, never banning.
	BanTime           time.Duration
	Action            Action
	Ports             []uint16 // firewall scope
	DistinctPasswords bool     // count one failure per distinct password hash
	// Apps, if not empty, restricts the jail to events reported by these web
	// apps through the API (see Report); events of Dovecot and Postfix,
	// which name no app, then do not count. Empty: events of every source.
	Apps []string
	// Logs names the log sources that feed the jail (LogFailure), for
	// status. A jail with logs that also counts auth-failure counts one
	// failed login once, though the Dovecot hook reports it and Dovecot
	// logs it: see onceLedger.
	Logs []string
}

func (j *Jail) counts(event, protocol, app string) bool {
	if !slices.Contains(j.Events, event) {
		return false
	}
	if len(j.Apps) > 0 && !slices.Contains(j.Apps, app) {
		return false
	}
	return len(j.Protocols) == 0 || slices.Contains(j.Protocols, strings.ToLower(protocol))
}

// Config is what New needs.
type Config struct {
	Jails          []Jail // enabled jails
	Ignore         []netip.Prefix
	Prefixes       Prefixes
	Recidive       store.Recidive
	KnownDeviceTTL time.Duration    // zero: DefaultKnownDeviceTTL
	Log            *slog.Logger     // nil: slog.Default()
	Metrics        Metrics          // nil: none
	Now            func() time.Time // nil: time.Now; must be the store's clock
	SecondFactor   SecondFactor     // zero: no TOTP enforcement, no totp jail

	// Shared is the shared-address rule (shared.go); zero MinUsers: off.
	// It needs a store with store.Sharing (both backends have it).
	Shared SharedRule

	// Audit records every counted failure, refusal, ban and unban
	// (audit.go); nil: no audit trail.
	Audit Auditor

	// MaxBansPerMinute is the blast-radius guard (blast.go); zero: off. It
	// needs a store with store.Holding (both backends have it).
	MaxBansPerMinute int

	// Widen are the adaptive IPv6 prefix steps (widen.go); empty: off.
	// They need a store with store.Sharing.
	Widen []WidenStep
}

// Metrics receives what guard counts. Implementations must be safe for
// concurrent use.
type Metrics interface {
	Failure(jail, protocol string)
	Banned(jail string)
}

// Guard applies the jails. It is safe for concurrent use.
type Guard struct {
	st       store.Store
	jails    []Jail
	byName   map[string]*Jail
	ignore   []netip.Prefix
	prefixes Prefixes
	recidive store.Recidive
	knownTTL time.Duration
	log      *slog.Logger
	metrics  Metrics
	now      func() time.Time

	rateLogged dedup.Limiter // "rate limit" info lines, one per key per findtime
	once       onceLedger    // count-once pairing of hook and log reports

	tf      SecondFactor
	ts      store.TOTPStore // st, when tf is set
	totpLog dedup.Limiter   // "second factor required" info lines

	shared       SharedRule
	sharing      store.Sharing // nil: the shared-address rule is off
	sharedLogged dedup.Limiter // "shared address" info lines, one per subject per window

	widen   []WidenStep   // empty: adaptive IPv6 prefixes are off
	devices store.Sharing // users with known devices per widen prefix

	holding     store.Holding // nil: the blast-radius guard is off
	holdLimit   int
	holdMetrics HoldMetrics   // nil: none
	holdLogged  dedup.Limiter // "ban held" lines, one per subject per minute

	protoMu sync.Mutex
	byProto map[string]map[string]int64 // jail → protocol → failures counted by this node

	audit    Auditor  // nil: none
	refusals refusals // audit.go
}

// New returns a Guard over st.
func New(st store.Store, c Config) (*Guard, error) {
	g := &Guard{
		st: st, ignore: c.Ignore, prefixes: c.Prefixes, recidive: c.Recidive,
		knownTTL: c.KnownDeviceTTL, log: c.Log, metrics: c.Metrics, now: c.Now,
		byName: make(map[string]*Jail), audit: c.Audit,
	}
	if g.knownTTL <= 0 {
		g.knownTTL = DefaultKnownDeviceTTL
	}
	if g.now == nil {
		g.now = time.Now
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	if err := g.setShared(c.Shared); err != nil {
		return nil, err
	}
	if err := g.setHold(c.MaxBansPerMinute); err != nil {
		return nil, err
	}
	if err := g.setWiden(c.Widen); err != nil {
		return nil, err
	}
	g.jails = slices.Clone(c.Jails)
	if c.SecondFactor.Prefix != nil {
		if err := g.initSecondFactor(c.SecondFactor); err != nil {
			return nil, err
		}
	}
	for i := range g.jails {
		j := &g.jails[i]
		if !j.Key.Valid() {
			return nil, fmt.Errorf("guard: jail %s: unknown key %q", j.Name, j.Key)
		}
		if j.MaxRetry <= 0 || j.FindTime <= 0 {
			return nil, fmt.Errorf("guard: jail %s: maxretry and findtime must be positive", j.Name)
		}
		if _, dup := g.byName[j.Name]; dup || j.Name == ManualJail {
			return nil, fmt.Errorf("guard: jail name %q used twice or reserved", j.Name)
		}
		g.byName[j.Name] = j
	}
	return g, nil
}

// Jails returns the enabled jails.
func (g *Guard) Jails() []Jail { return slices.Clone(g.jails) }

// Jail returns the named jail.
func (g *Guard) Jail(name string) (Jail, bool) {
	j, ok := g.byName[name]
	if !ok {
		return Jail{}, false
	}
	return *j, true
}

// Ignored reports whether a is inside ignoreip.
func (g *Guard) Ignored(a netip.Addr) bool {
	a = Canon(a)
	for _, p := range g.ignore {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// IgnoredPrefix reports whether any address of p is inside ignoreip.
func (g *Guard) IgnoredPrefix(p netip.Prefix) bool {
	for _, q := range g.ignore {
		if q.Overlaps(p) {
			return true
		}
	}
	return false
}

func (g *Guard) subject(j *Jail, a netip.Addr, user string) (string, bool) {
	switch j.Key {
	case KeyIP:
		return netSubject(hostPrefix(a)), true
	case KeyPrefix:
		return netSubject(g.prefixes.of(a)), true
	case KeyUser:
		if normUser(user) == "" {
			return "", false
		}
		return userSubject(user), true
	case KeyUserPrefix:
		if normUser(user) == "" {
			return "", false
		}
		return userNetSubject(user, g.prefixes.of(a)), true
	}
	return "", false
}

// subjects are the subjects of one client and login, each built once for all
// jails of a call (building them was a third of the allocations per request).
type subjects struct {
	host, prefix string // net: subjects; the same string when the prefix is the host
	user         string // normalised login, "" if none
	userSubj     string // user: subject, "" if no login
	userNet      string // user+net: subject, "" if no login
}

// subjectsOf builds the subjects of a canonical address and a login.
func (g *Guard) subjectsOf(a netip.Addr, user string) subjects {
	var s subjects
	hp, p := hostPrefix(a), g.prefixes.of(a)
	s.host = netSubject(hp)
	s.prefix = s.host
	if p.Masked() != hp.Masked() {
		s.prefix = netSubject(p)
	}
	if s.user = normUser(user); s.user != "" {
		s.userSubj = userSubject(s.user)
		s.userNet = userNetSubject(s.user, p)
	}
	return s
}

func (s *subjects) of(k Key) (string, bool) {
	switch k {
	case KeyIP:
		return s.host, true
	case KeyPrefix:
		return s.prefix, true
	case KeyUser:
		return s.userSubj, s.user != ""
	case KeyUserPrefix:
		return s.userNet, s.user != ""
	}
	return "", false
}

func (g *Guard) knownKey(a netip.Addr, user string) string {
	if normUser(user) == "" {
		return ""
	}
	return userNetSubject(user, g.prefixes.of(a))
}

// Verdict is what CheckLogin finds about a client logging in as a user.
type Verdict struct {
	// Refused: a ban refuses the client or the user logging in from it.
	Refused bool
	// Banned names the subject of a ban that refuses ("net:192.0.2.7/32",
	// "user:alice@example.org"), an address ban's when there is one.
	Banned string
	// ByUser: every ban that refuses is keyed by the user alone (key user),
	// so the refusal is about the account, not the client's network.
	ByUser bool
	// Failures is the most recent failures any jail counting auth failures
	// holds against the client's address, prefix or user+prefix.
	Failures int
	// UserFailures is the most any such jail keyed by user alone holds
	// against the login (failures from anywhere); zero from the user's known
	// devices.
	UserFailures int
	// SecondFactor (CheckAfterAuth only): the user has enrolled a TOTP
	// second factor and the client's trust prefix is not approved: the
	// login must be refused although the password was right.
	SecondFactor bool
	// Ref is the audit id of the refusal ("" when not refused or not
	// auditing): front ends put it in their log line and reply.
	Ref string
}

// Check tells whether a client (and, if not empty, the user it logs in as) is
// refused, and how many recent failures count against it (the most of any
// jail counting auth failures). banned names the subject of the ban that
// refuses (Verdict.Banned), empty when the client is not refused: front ends
// key their refusal log lines by it, so that a client rotating through a
// banned prefix makes one line, not one per address. See CheckLogin.
func (g *Guard) Check(ctx context.Context, a netip.Addr, user string) (banned string, failures int, err error) {
	v, err := g.CheckLogin(ctx, a, user)
	return v.Banned, max(v.Failures, v.UserFailures), err
}

// CheckLogin tells whether a client (and, if not empty, the user it logs in
// as) is refused, whether by a user ban, and how many recent failures count
// against the client and against the user (the basis of a tarpit). One store
// round trip.
//
// A ban keyed by user refuses that user only from prefixes that are not its
// known devices: an attacker cannot lock a user out of their own phone.
func (g *Guard) CheckLogin(ctx context.Context, a netip.Addr, user string) (Verdict, error) {
	v, _, err := g.checkLogin(ctx, originOf(ctx), Canon(a), user, false)
	return v, err
}

// CheckFrom is CheckLogin for a front end that names itself (source) and
// the protocol, for the audit trail (see WithOrigin, which costs an
// allocation per call that this does not).
func (g *Guard) CheckFrom(ctx context.Context, source, protocol string, a netip.Addr, user string) (Verdict, error) {
	v, _, err := g.checkLogin(ctx, origin{source, protocol}, Canon(a), user, false)
	return v, err
}

// checkLogin is CheckLogin of a canonical address; with second (and a
// SecondFactor configured) the same round trip asks for the user's TOTP
// state, and an enrolled user from an unapproved trust prefix (returned)
// gets Verdict.SecondFactor.
func (g *Guard) checkLogin(ctx context.Context, o origin, a netip.Addr, user string, second bool) (Verdict, netip.Prefix, error) {
	var v Verdict
	var trust netip.Prefix
	if !a.IsValid() || g.Ignored(a) {
		return v, trust, nil
	}
	sj := g.subjectsOf(a, user)
	q := store.Query{Subjects: make([]string, 0, 4)}
	q.Subjects = append(q.Subjects, sj.host)
	if sj.prefix != sj.host {
		q.Subjects = append(q.Subjects, sj.prefix)
	}
	q.Subjects = g.widenSubjects(q.Subjects, a)
	if sj.user != "" {
		q.Subjects = append(q.Subjects, sj.userSubj, sj.userNet)
		q.Known = sj.userNet // what knownKey returns
		if second && g.tf.Prefix != nil {
			trust = g.tf.Prefix(a)
			q.TOTPUser, q.TOTPPrefix = sj.user, trust
		}
	}
	q.Counts = make([]store.Window, 0, len(g.jails))
	var ucBuf [8]bool
	userCounts := ucBuf[:0]
	for i := range g.jails {
		j := &g.jails[i]
		if !slices.Contains(j.Events, EventAuthFailure) {
			continue
		}
		if s, ok := sj.of(j.Key); ok {
			q.Counts = append(q.Counts, store.Window{Jail: j.Name, Subject: s, Span: j.FindTime})
			userCounts = append(userCounts, j.Key == KeyUser)
		}
	}
	ans, err := g.st.Check(ctx, q)
	if err != nil {
		return Verdict{}, trust, fmt.Errorf("guard: check: %w", err)
	}
	v.ByUser = true
	var by store.Ban // the ban named by v.Banned
	for _, b := range ans.Bans {
		byUser := strings.HasPrefix(b.Subject, "user:")
		if byUser && ans.Known {
			continue // the user's own device
		}
		if !v.Refused || !byUser {
			v.Banned, by = b.Subject, b
		}
		v.Refused = true
		v.ByUser = v.ByUser && byUser
	}
	if v.Refused {
		ref := g.auditRefusal(o, a, user, by)
		return Verdict{Refused: true, Banned: v.Banned, ByUser: v.ByUser, Ref: ref}, trust, nil
	}
	v.ByUser = false
	v.SecondFactor = ans.TOTP.Enrolled && !ans.TOTP.Approved
	for i, n := range ans.Counts {
		switch {
		case !userCounts[i]:
			v.Failures = max(v.Failures, n)
		case !ans.Known:
			v.UserFailures = max(v.UserFailures, n)
		}
	}
	return v, trust, nil
}

// Fail records a failed login. pwhash, if not empty, tells distinct
// passwords apart for jails with DistinctPasswords. It returns the bans made.
func (g *Guard) Fail(ctx context.Context, a netip.Addr, user, protocol, pwhash string) ([]store.Ban, error) {
	return g.event(ctx, EventAuthFailure, a, user, protocol, pwhash, "", nil)
}

// Abuse records SMTP abuse by a client.
func (g *Guard) Abuse(ctx context.Context, a netip.Addr, reason string) ([]store.Ban, error) {
	return g.event(ctx, EventAbuse, a, "", "smtp", reason, "", nil)
}

// event counts one event in every jail that counts it; app names the web
// app that reported it ("" for Dovecot and Postfix). The names of the jails
// that counted it are appended to *counted when counted is not nil.
func (g *Guard) event(ctx context.Context, kind string, a netip.Addr, user, protocol, member, app string, counted *[]string) ([]store.Ban, error) {
	a = Canon(a)
	if !a.IsValid() {
		return nil, errors.New("guard: invalid client address")
	}
	if g.Ignored(a) {
		return nil, nil
	}
	var bans []store.Ban
	var errs []error
	var note failureNote // for the audit trail
	sh := sharedUnknown
	for i := range g.jails {
		j := &g.jails[i]
		if !j.counts(kind, protocol, app) || j.BanTime <= 0 {
			continue
		}
		s, ok := g.subject(j, a, user)
		if !ok {
			continue
		}
		if kind == EventAuthFailure && g.countOnce(j) && !g.once.take(j, a, fromHook, g.now()) {
			g.log.Debug("failure counted once", "jail", j.Name, "key", s, "protocol", protocol, "by", "log")
			continue
		}
		h := g.hit(j, s, kind+" "+strings.ToLower(protocol))
		if j.Key.ByAddress() && g.sharing != nil {
			if sh == sharedUnknown {
				sh = g.sharedState(ctx, a)
			}
			if sh == sharedYes {
				h.BanTime = 0 // counted, never banned: see SharedRule
			}
		}
		if j.DistinctPasswords && member != "" {
			h.Member = g.prefixes.of(a).String() + "|" + normUser(user) + "|" + member
		}
		r, err := g.hitBan(ctx, j, h)
		if err != nil {
			errs = append(errs, fmt.Errorf("guard: jail %s: %w", j.Name, err))
			continue
		}
		g.counted(j.Name, protocol)
		if counted != nil {
			*counted = append(*counted, j.Name)
		}
		if h.BanTime == 0 && r.Count >= j.MaxRetry {
			g.spared(j, s, r.Count)
		}
		note.add(j.Name, r.Count, h.BanTime == 0 && r.Count >= j.MaxRetry)
		g.log.Debug("failure", "jail", j.Name, "key", s, "count", r.Count, "protocol", protocol)
		if r.Ban != nil {
			bans = append(bans, g.banMade(ctx, j, a, r, "protocol", protocol)...)
		}
	}
	g.auditFailure(ctx, kind, a, user, protocol, app, &note, bans)
	return bans, errors.Join(errs...)
}

// banMade tells the metrics and the log of the ban r made by a failure from
// a in jail j (key and value name where it came from: protocol or log
// source) and widens it. It returns the ban, then the wider ones.
func (g *Guard) banMade(ctx context.Context, j *Jail, a netip.Addr, r store.HitResult, key, value string) []store.Ban {
	if g.metrics != nil {
		g.metrics.Banned(j.Name)
	}
	g.log.Info("ban", "jail", j.Name, "key", r.Ban.Subject, "ttl", r.Ban.Expires.Sub(r.Ban.Created).Round(time.Second),
		"count", r.Count, "nth", r.Ban.Nth, key, value)
	return append([]store.Ban{*r.Ban}, g.widened(ctx, j, a, *r.Ban)...)
}

// hit is the store.Hit of one failure of subject s in jail j.
func (g *Guard) hit(j *Jail, s, reason string) store.Hit {
	return store.Hit{
		Jail: j.Name, Subject: s, Span: j.FindTime, MaxRetry: j.MaxRetry,
		BanTime: j.BanTime, Recidive: g.recidive, Reason: reason,
	}
}

// counted tells the metrics and the per-protocol status of a recorded event.
func (g *Guard) counted(jail, protocol string) {
	if g.metrics != nil {
		g.metrics.Failure(jail, protocol)
	}
	g.countProtocol(jail, protocol)
}

func (g *Guard) countProtocol(jail, protocol string) {
	protocol = strings.ToLower(protocol)
	if protocol == "" {
		protocol = "other"
	}
	g.protoMu.Lock()
	defer g.protoMu.Unlock()
	if g.byProto == nil {
		g.byProto = make(map[string]map[string]int64)
	}
	m := g.byProto[jail]
	if m == nil {
		m = make(map[string]int64)
		g.byProto[jail] = m
	}
	if len(m) < 32 { // protocols are a small set; bound it anyway
		m[protocol]++
	} else if _, ok := m[protocol]; ok {
		m[protocol]++
	}
}

// Succeed records a successful login: the (user, prefix) pair becomes a known
// device for KnownDeviceTTL and its failures are forgotten.
func (g *Guard) Succeed(ctx context.Context, a netip.Addr, user string) error {
	a = Canon(a)
	key := g.knownKey(a, user)
	if key == "" || !a.IsValid() {
		return nil
	}
	if err := g.st.Remember(ctx, key, g.knownTTL); err != nil {
		return fmt.Errorf("guard: remember device: %w", err)
	}
	if err := g.share(ctx, a, user); err != nil {
		return err
	}
	if err := g.rememberWide(ctx, a, normUser(user)); err != nil {
		return err
	}
	for i := range g.jails {
		j := &g.jails[i]
		if j.Key == KeyUserPrefix {
			if err := g.st.Reset(ctx, j.Name, key); err != nil {
				return fmt.Errorf("guard: jail %s: reset: %w", j.Name, err)
			}
		}
	}
	return nil
}

// Recipient counts one recipient sent by an authenticated user against the
// rate-limit jails (those counting rcpt events); over tells the caller to
// defer. Every recipient counts, deferred ones too: a sender that keeps
// pushing stays over.
func (g *Guard) Recipient(ctx context.Context, a netip.Addr, user string) (over bool, err error) {
	a = Canon(a)
	if normUser(user) == "" || !a.IsValid() || g.Ignored(a) {
		return false, nil
	}
	for i := range g.jails {
		j := &g.jails[i]
		if !j.counts(EventRecipient, "smtp", "") {
			continue
		}
		s, ok := g.subject(j, a, user)
		if !ok {
			continue
		}
		r, err := g.hitBan(ctx, j, g.hit(j, s, EventRecipient))
		if err != nil {
			return false, fmt.Errorf("guard: jail %s: %w", j.Name, err)
		}
		g.counted(j.Name, "smtp")
		if r.Count > j.MaxRetry || r.Ban != nil {
			if ok, n := g.rateLogged.AllowEvery(j.Name+"|"+s, g.now(), j.FindTime); ok {
				g.log.Info("rate limit", "jail", j.Name, "key", s, "count", r.Count, "findtime", j.FindTime, "suppressed", n)
			} else {
				g.log.Debug("rate limit", "jail", j.Name, "key", s, "count", r.Count)
			}
			over = true
		}
	}
	return over, nil
}

// ErrIgnored refuses a ban on an address inside ignoreip.
var ErrIgnored = errors.New("inside ignoreip: never banned")

// Errors in what a caller asked for, as opposed to a failure of the store:
// match them with errors.Is (the admin API answers them 4xx, anything else
// 503).
var (
	ErrNoJail = errors.New("no such jail")
	ErrTarget = errors.New("neither an address, a prefix nor a login")
)

// requestError is an error of kind (ErrNoJail, ErrTarget) with its own text.
type requestError struct {
	kind error
	msg  string
}

func (e *requestError) Error() string { return e.msg }
func (e *requestError) Unwrap() error { return e.kind }

func noJail(name string) error {
	return &requestError{ErrNoJail, fmt.Sprintf("no jail %q", name)}
}

// Ban bans target (an address, prefix or login) in jail (ManualJail when
// empty) for d (the jail's bantime when zero; one hour for the manual jail).
func (g *Guard) Ban(ctx context.Context, target, jail string, d time.Duration) (store.Ban, error) {
	subject, prefix, err := g.ParseTarget(target)
	if err != nil {
		return store.Ban{}, err
	}
	if prefix.IsValid() && g.IgnoredPrefix(prefix) {
		return store.Ban{}, fmt.Errorf("%s is %w", target, ErrIgnored)
	}
	if jail == "" {
		jail = ManualJail
	}
	if j, ok := g.byName[jail]; ok {
		if d <= 0 {
			d = j.BanTime
		}
	} else if jail != ManualJail {
		return store.Ban{}, noJail(jail)
	}
	if d <= 0 {
		d = ManualBanTime
	}
	b, err := g.st.Ban(ctx, store.Ban{Jail: jail, Subject: subject, Created: g.now(), Expires: g.now().Add(d), Reason: "manual"})
	if err != nil {
		return store.Ban{}, err
	}
	if g.metrics != nil {
		g.metrics.Banned(jail)
	}
	g.log.Info("ban", "jail", jail, "key", subject, "ttl", d, "reason", "manual")
	g.auditAdmin(audit.KindBan, b, prefix)
	return b, nil
}

// Unban lifts every ban on target, on every node.
func (g *Guard) Unban(ctx context.Context, target string) ([]store.Ban, error) {
	subject, prefix, err := g.ParseTarget(target)
	if err != nil {
		return nil, err
	}
	lifted, err := g.st.Unban(ctx, subject)
	if err != nil {
		return nil, err
	}
	for _, b := range lifted {
		g.log.Info("unban", "jail", b.Jail, "key", b.Subject)
		g.auditAdmin(audit.KindUnban, b, prefix)
	}
	return lifted, nil
}

// JailStatus is one jail's line of `mailguard status`.
type JailStatus struct {
	Jail
	store.JailStats
	Banned []store.Ban
	// ByProtocol counts the failures this node recorded per protocol (imap,
	// pop3, smtp, ...) since it started.
	ByProtocol map[string]int64
}

// Status reports every jail (and the manual one if it holds bans), or only
// the named jail.
func (g *Guard) Status(ctx context.Context, only string) ([]JailStatus, error) {
	if only != "" && only != ManualJail {
		if _, ok := g.byName[only]; !ok {
			return nil, noJail(only)
		}
	}
	names := []string{}
	for _, j := range g.jails {
		names = append(names, j.Name)
	}
	names = append(names, ManualJail)
	stats, err := g.st.Stats(ctx, names)
	if err != nil {
		return nil, err
	}
	bans, err := g.st.Bans(ctx)
	if err != nil {
		return nil, err
	}
	byJail := map[string][]store.Ban{}
	for _, b := range bans {
		byJail[b.Jail] = append(byJail[b.Jail], b)
	}
	var out []JailStatus
	add := func(j Jail) {
		if only != "" && j.Name != only {
			return
		}
		bs := byJail[j.Name]
		sort.Slice(bs, func(a, b int) bool { return bs[a].Subject < bs[b].Subject })
		g.protoMu.Lock()
		by := maps.Clone(g.byProto[j.Name])
		g.protoMu.Unlock()
		out = append(out, JailStatus{Jail: j, JailStats: stats[j.Name], Banned: bs, ByProtocol: by})
	}
	for _, j := range g.jails {
		add(j)
	}
	if len(byJail[ManualJail]) > 0 || only == ManualJail || stats[ManualJail].TotalBanned > 0 {
		add(Jail{Name: ManualJail, Action: ActionFirewall, BanTime: ManualBanTime})
	}
	return out, nil
}
