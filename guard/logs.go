package guard

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/mailguard/mailguard/store"
)

// ProtocolLog is the protocol label (metrics) of failures found in logs;
// the status of a jail counts them per source instead.
const ProtocolLog = "log"

// LogFailure records a failure that one of jail's log sources found (a
// filter matched a line naming client a, and user when the filter takes
// one). It counts in that jail alone, whatever the jail's events: the
// jail named the source. source names it for people: it is the ban's
// reason and the jail's per-source count in status
// ("log:/var/log/mail.log:postfix").
//
// counted is false when nothing was counted: the address is in ignoreip,
// the jail's key needs a user the line did not give, or the failure was
// already counted from the Dovecot hook (see the count-once rule on
// Jail.Logs).
func (g *Guard) LogFailure(ctx context.Context, jail string, a netip.Addr, user, source string) (bans []store.Ban, counted bool, err error) {
	j, ok := g.byName[jail]
	if !ok {
		return nil, false, noJail(jail)
	}
	a = Canon(a)
	if !a.IsValid() {
		return nil, false, fmt.Errorf("guard: invalid client address")
	}
	if g.Ignored(a) || j.BanTime <= 0 {
		return nil, false, nil
	}
	s, ok := g.subject(j, a, user)
	if !ok {
		return nil, false, nil
	}
	if g.countOnce(j) && !g.once.take(j, a, fromLog, g.now()) {
		g.log.Debug("failure counted once", "jail", j.Name, "key", s, "source", source, "by", "hook")
		return nil, false, nil
	}
	h := g.hit(j, s, source)
	if j.Key.ByAddress() && g.sharing != nil && g.sharedState(ctx, a) == sharedYes {
		h.BanTime = 0 // counted, never banned: see SharedRule
	}
	r, err := g.hitBan(ctx, j, h) // through the blast-radius guard (blast.go)
	if err != nil {
		return nil, false, fmt.Errorf("guard: jail %s: %w", j.Name, err)
	}
	if h.BanTime == 0 && r.Count >= j.MaxRetry {
		g.spared(j, s, r.Count)
	}
	if g.metrics != nil {
		g.metrics.Failure(j.Name, ProtocolLog)
	}
	g.countProtocol(j.Name, source)
	g.log.Debug("failure", "jail", j.Name, "key", s, "count", r.Count, "source", source)
	if r.Ban != nil {
		bans = g.banMade(ctx, j, a, r, "source", source)
	}
	if g.audit != nil { // audit.go
		var note failureNote
		note.add(j.Name, r.Count, h.BanTime == 0 && r.Count >= j.MaxRetry)
		g.auditFailure(WithOrigin(ctx, source, ""), ProtocolLog, a, user, "", "", &note, bans)
	}
	return bans, true, nil
}

// countOnce reports whether j takes one failure from two reporters: the
// Dovecot hook (auth-failure) and its own logs.
func (g *Guard) countOnce(j *Jail) bool {
	return len(j.Logs) > 0 && slices.Contains(j.Events, EventAuthFailure)
}

// Origins of a failure, for the count-once ledger.
const (
	fromHook = iota
	fromLog
)

// onceLedger pairs the two reports of one failed login, for jails that
// count failures from both the Dovecot hook and a log (Jail.Logs): within
// the jail's findtime, a report from one side absorbs one earlier,
// unpaired report from the other side for the same client address, so a
// failure Dovecot reports and also logs counts once, in whichever order
// the two arrive. It may count one failure less (two failures of one
// address, one seen only by the hook and one only in the log, pair up),
// never one more.
type onceLedger struct {
	mu sync.Mutex
	m  map[string]*onceEntry // jail "|" address
}

// onceEntry holds the unpaired reports of one address, oldest first, all
// of one origin (a report of the other origin pairs instead of adding).
type onceEntry struct {
	origin int
	times  []time.Time
}

// Bounds of the ledger's memory: at most maxOnceKeys addresses (expired
// entries are dropped first, then an arbitrary half) and maxOnceTimes
// unpaired reports per address.
const (
	maxOnceKeys  = 100_000
	maxOnceTimes = 64
)

// take records a report of origin from a at now in jail j and says whether
// it counts: false when it paired with an earlier report of the other
// origin (which counted).
func (l *onceLedger) take(j *Jail, a netip.Addr, origin int, now time.Time) bool {
	key := j.Name + "|" + a.String()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[string]*onceEntry)
	}
	e := l.m[key]
	if e != nil {
		// Forget what findtime has aged out: it no longer counts anyway.
		i := 0
		for i < len(e.times) && now.Sub(e.times[i]) > j.FindTime {
			i++
		}
		e.times = e.times[i:]
		if len(e.times) > 0 && e.origin != origin {
			e.times = e.times[1:]
			if len(e.times) == 0 {
				delete(l.m, key)
			}
			return false
		}
	} else {
		if len(l.m) >= maxOnceKeys {
			l.makeRoom(now, j.FindTime)
		}
		e = &onceEntry{}
		l.m[key] = e
	}
	e.origin = origin
	if len(e.times) >= maxOnceTimes {
		e.times = e.times[1:]
	}
	e.times = append(e.times, now)
	return true
}

// makeRoom drops entries older than span, then half of the rest if that
// was not enough. l.mu is held.
func (l *onceLedger) makeRoom(now time.Time, span time.Duration) {
	for k, e := range l.m {
		if len(e.times) == 0 || now.Sub(e.times[len(e.times)-1]) > span {
			delete(l.m, k)
		}
	}
	n := len(l.m) / 2
	for k := range l.m {
		if len(l.m) < maxOnceKeys/2 || n == 0 {
			break
		}
		delete(l.m, k)
		n--
	}
}
