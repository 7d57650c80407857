// Package enforce keeps this node's kernel firewall holding the store's
// bans: it turns the store's ban and unban events into firewall calls and
// reconciles the whole firewall with the store at start and every
// Enforcer.Interval, so that a node that missed events, or whose firewall was
// changed by hand, converges. guard decides who is banned; enforce only
// carries its bans into the kernel.
package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/store"
)

// Firewall is what the Enforcer needs of a kernel firewall;
// firewall.Backend has it. Add renews an entry already held, Remove ignores
// one not held, and Sync makes the kernel hold exactly the entries given.
type Firewall interface {
	Add(ctx context.Context, entries []firewall.Entry) error
	Remove(ctx context.Context, entries []firewall.Entry) error
	Sync(ctx context.Context, entries []firewall.Entry) error
}

// Metrics receives what the Enforcer counts. Implementations must be
// safe for concurrent use.
type Metrics interface {
	// FirewallError counts a failed operation: "add", "remove", "sync" or
	// "watch".
	FirewallError(op string)
	// FirewallEntries reports how many entries the last successful Sync
	// made the kernel hold.
	FirewallEntries(n int)
}

// DefaultReconcileInterval is the Enforcer's Interval when zero, and the
// default of the firewall.reconcile_interval setting.
const DefaultReconcileInterval = time.Minute

// maxQueued bounds the events waiting for the firewall; past it they are
// dropped and the next turn re-syncs the whole firewall instead.
const maxQueued = 10000

// Enforcer keeps the node's kernel firewall holding the store's bans: the
// bans of jails whose Action is guard.ActionFirewall (and of guard.ManualJail, on the
// union of those jails' ports) whose subject is a network, minus any that
// overlaps ignoreip. Bans keyed by user never reach the firewall.
//
// Run syncs the firewall to store.Bans at start, then applies every ban and
// unban event as it comes (Add, Remove) and syncs again every Interval, so a
// node that missed events, or whose firewall was changed by hand, converges.
// Errors are logged and counted, never fatal: the next reconcile retries.
type Enforcer struct {
	Guard    *guard.Guard // the jails: actions, ports, ignoreip
	Store    store.Store
	Firewall Firewall
	Interval time.Duration // between full syncs; zero: DefaultReconcileInterval
	Log      *slog.Logger  // nil: slog.Default()
	Metrics  Metrics       // nil: none

	tick <-chan time.Time // tests: replaces the Interval ticker
}

// scope is how far each jail's bans reach into the firewall.
type scope struct {
	ports map[string][]uint16 // firewall jails (and ManualJail) → ports; nil ports: all
}

func (e *Enforcer) scope() scope {
	s := scope{ports: map[string][]uint16{}}
	var union []uint16
	all, some := false, false
	for _, j := range e.Guard.Jails() {
		if j.Action != guard.ActionFirewall {
			continue
		}
		s.ports[j.Name] = slices.Clone(j.Ports)
		some = true
		if len(j.Ports) == 0 {
			all = true
		}
		union = append(union, j.Ports...)
	}
	if some {
		slices.Sort(union)
		union = slices.Compact(union)
		if all {
			union = nil
		}
		s.ports[guard.ManualJail] = union
	}
	return s
}

// entry returns the firewall entry of ban b, if it has one.
func (e *Enforcer) entry(s scope, b store.Ban) (firewall.Entry, bool) {
	ports, ok := s.ports[b.Jail]
	if !ok {
		return firewall.Entry{}, false // refuse-only, user-keyed or unknown jail
	}
	p, ok := guard.SubjectPrefix(b.Subject)
	if !ok {
		return firewall.Entry{}, false
	}
	if e.Guard.IgnoredPrefix(p) {
		e.log().Warn("firewall: not banning a prefix inside ignoreip", "jail", b.Jail, "key", b.Subject)
		return firewall.Entry{}, false
	}
	return firewall.Entry{Prefix: p, Ports: ports, Expires: b.Expires}, true
}

func (e *Enforcer) log() *slog.Logger {
	if e.Log != nil {
		return e.Log
	}
	return slog.Default()
}

func (e *Enforcer) failed(op string, err error) {
	e.log().Error("firewall: "+op, "err", err)
	if e.Metrics != nil {
		e.Metrics.FirewallError(op)
	}
}

// Run enforces until ctx ends, then returns nil. It returns an error only if
// the store is closed under it.
func (e *Enforcer) Run(ctx context.Context) error {
	if e.Guard == nil || e.Store == nil || e.Firewall == nil {
		return errors.New("enforce: the Enforcer needs a Guard, a Store and a Firewall")
	}
	s := e.scope()
	interval := e.Interval
	if interval <= 0 {
		interval = DefaultReconcileInterval
	}
	tick := e.tick
	if tick == nil {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q := &queue{ready: make(chan struct{}, 1)}
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		e.watch(ctx, q, min(interval, 10*time.Second))
	}()
	defer func() { cancel(); <-watchDone }()

	// Watch first, then Sync: an event racing the first snapshot is applied
	// after it, and events are idempotent.
	e.sync(ctx, s)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick:
			q.requestSync()
		case <-q.ready:
		}
		evs, resync, err := q.take()
		if err != nil {
			return err
		}
		if resync {
			// The snapshot is newer than every event taken: they are in it.
			e.sync(ctx, s)
			continue
		}
		e.apply(ctx, s, evs)
	}
}

// watch runs Store.Watch until ctx ends, restarting it after an error (and
// asking for a sync: events may have been missed meanwhile).
func (e *Enforcer) watch(ctx context.Context, q *queue, backoff time.Duration) {
	for {
		err := e.Store.Watch(ctx, q.push)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, store.ErrClosed) {
			q.fail(fmt.Errorf("enforce: watch: %w", err))
			return
		}
		e.failed("watch", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		q.requestSync()
	}
}

func (e *Enforcer) sync(ctx context.Context, s scope) {
	bans, err := e.Store.Bans(ctx)
	if err != nil {
		if ctx.Err() == nil {
			e.failed("sync", fmt.Errorf("store bans: %w", err))
		}
		return
	}
	var entries []firewall.Entry
	for _, b := range bans {
		if en, ok := e.entry(s, b); ok {
			entries = append(entries, en)
		}
	}
	if err := e.Firewall.Sync(ctx, entries); err != nil {
		if ctx.Err() == nil {
			e.failed("sync", err)
		}
		return
	}
	if e.Metrics != nil {
		e.Metrics.FirewallEntries(len(entries))
	}
	e.log().Debug("firewall synced", "count", len(entries))
}

// apply applies events in order, one firewall call per run of bans or of
// unbans.
func (e *Enforcer) apply(ctx context.Context, s scope, evs []store.Event) {
	for len(evs) > 0 {
		kind := evs[0].Kind
		var entries []firewall.Entry
		n := 0
		for n < len(evs) && evs[n].Kind == kind {
			if en, ok := e.entry(s, evs[n].Ban); ok {
				entries = append(entries, en)
			}
			n++
		}
		evs = evs[n:]
		if len(entries) == 0 {
			continue
		}
		var err error
		op := "add"
		switch kind {
		case store.Banned:
			err = e.Firewall.Add(ctx, entries)
		case store.Unbanned:
			op = "remove"
			err = e.Firewall.Remove(ctx, entries)
		default:
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				e.failed(op, err) // the next reconcile repairs
			}
			continue
		}
		e.log().Debug("firewall "+op, "count", len(entries))
	}
}

// queue hands events from the store's Watch goroutine to Run without ever
// blocking the store: past maxQueued it drops them and asks for a sync.
type queue struct {
	mu     sync.Mutex
	evs    []store.Event
	resync bool
	err    error
	ready  chan struct{}
}

func (q *queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *queue) push(ev store.Event) {
	q.mu.Lock()
	if len(q.evs) < maxQueued && !q.resync {
		q.evs = append(q.evs, ev)
	} else {
		q.evs, q.resync = nil, true
	}
	q.mu.Unlock()
	q.signal()
}

func (q *queue) requestSync() {
	q.mu.Lock()
	q.evs, q.resync = nil, true
	q.mu.Unlock()
	q.signal()
}

func (q *queue) fail(err error) {
	q.mu.Lock()
	q.err = err
	q.mu.Unlock()
	q.signal()
}

func (q *queue) take() (evs []store.Event, resync bool, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	evs, resync, err = q.evs, q.resync, q.err
	q.evs, q.resync = nil, false
	return evs, resync, err
}
