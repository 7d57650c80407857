package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// eventWait bounds how long the suite waits for an event.
const eventWait = 5 * time.Second

var watchCases = []testCase{
	{"DeliversInOrder", testWatchOrder},
	{"ReturnsCtxErr", testWatchCtx},
	{"ManyWatchers", testWatchMany},
}

// watcher runs Watch in a goroutine the test owns and collects events.
type watcher struct {
	e      *env
	events chan store.Event
	cancel context.CancelFunc
	done   chan error
	probes int
}

// watch starts Watch and returns once it is known to deliver: it places
// probe bans until one is seen, since Watch promises only events "from now
// on" and may subscribe asynchronously. Probe events are skipped afterwards.
func (e *env) watch() *watcher {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	w := &watcher{e: e, events: make(chan store.Event, 4096), cancel: cancel, done: make(chan error, 1)}
	go func() {
		w.done <- e.st.Watch(ctx, func(ev store.Event) {
			select {
			case w.events <- ev:
			default: // the test reads far fewer; a lost event fails it as missing
			}
		})
	}()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(eventWait):
			e.t.Errorf("Watch did not return %v after its context ended", eventWait)
		}
	})
	deadline := time.Now().Add(eventWait)
	for time.Now().Before(deadline) {
		w.probes++
		e.ban(store.Ban{Jail: "storetest-probe", Subject: fmt.Sprintf("storetest:probe-%d", w.probes),
			Expires: e.now().Add(time.Hour), Reason: "probe"})
		wait := time.NewTimer(100 * time.Millisecond)
	drain:
		for {
			select {
			case ev := <-w.events:
				if ev.Ban.Jail == "storetest-probe" {
					wait.Stop()
					return w
				}
				e.t.Fatalf("Watch delivered %v %s before any probe", ev.Kind, fmtBan(ev.Ban))
			case err := <-w.done:
				e.t.Fatalf("Watch returned %v before its context ended", err)
			case <-wait.C:
				break drain
			}
		}
	}
	e.t.Fatalf("Watch delivered none of %d probe bans within %v", w.probes, eventWait)
	return nil
}

// next returns the next event that is not a probe, waiting up to eventWait.
func (w *watcher) next() (store.Event, bool) { return w.nextWithin(eventWait) }

// expect checks that the next events are want, in order.
func (w *watcher) expect(want ...store.Event) {
	w.e.t.Helper()
	for i, ev := range want {
		got, ok := w.next()
		if !ok {
			w.e.t.Fatalf("event %d: none within %v, want %v %s", i+1, eventWait, ev.Kind, fmtBan(ev.Ban))
		}
		if got.Kind != ev.Kind || !sameBan(got.Ban, ev.Ban) {
			w.e.t.Errorf("event %d = %v %s, want %v %s", i+1, got.Kind, fmtBan(got.Ban), ev.Kind, fmtBan(ev.Ban))
		}
	}
}

// expectSet checks that the next len(want) events are want, in any order.
func (w *watcher) expectSet(kind store.EventKind, want ...store.Ban) {
	w.e.t.Helper()
	var got []store.Ban
	for i := range want {
		ev, ok := w.next()
		if !ok {
			w.e.t.Fatalf("event %d of %d: none within %v", i+1, len(want), eventWait)
		}
		if ev.Kind != kind {
			w.e.t.Errorf("event %v %s, want %v", ev.Kind, fmtBan(ev.Ban), kind)
		}
		got = append(got, ev.Ban)
	}
	w.e.wantBans(kind.String()+" events", got, want)
}

func testWatchOrder(t *testing.T, e *env) {
	w := e.watch()
	s := store.Subject("net:192.0.2.40/32")
	hit := e.banBy(hitFor("dovecot", s))
	manual := e.ban(store.Ban{Jail: "manual", Subject: s, Expires: e.now().Add(2 * time.Hour), Reason: "manual"})
	other := e.ban(store.Ban{Jail: "manual", Subject: "user:ida@example.org", Expires: e.now().Add(time.Hour), Reason: "manual"})
	w.expect(
		store.Event{Kind: store.Banned, Ban: hit},
		store.Event{Kind: store.Banned, Ban: manual},
		store.Event{Kind: store.Banned, Ban: other},
	)
	e.clk.Advance(time.Second)
	lifted := e.unban(s)
	w.expectSet(store.Unbanned, lifted...)
	if len(lifted) != 2 {
		t.Errorf("Unban lifted %s, want 2 bans", fmtBans(lifted))
	}
	e.wantBans("Unbanned events", lifted, []store.Ban{hit, manual})
	again := e.ban(store.Ban{Jail: "manual", Subject: s, Expires: e.now().Add(time.Hour), Reason: "again"})
	e.unban(other.Subject)
	w.expect(
		store.Event{Kind: store.Banned, Ban: again},
		store.Event{Kind: store.Unbanned, Ban: other},
	)
	if ev, ok := w.nextWithin(200 * time.Millisecond); ok {
		t.Errorf("unexpected event %v %s", ev.Kind, fmtBan(ev.Ban))
	}
}

// nextWithin is next with a shorter wait, to look for events that should
// not come. It can only catch what arrives in time; that is enough to catch
// a store that repeats events.
func (w *watcher) nextWithin(d time.Duration) (store.Event, bool) {
	timeout := time.After(d)
	for {
		select {
		case ev := <-w.events:
			if ev.Ban.Jail == "storetest-probe" {
				continue
			}
			return ev, true
		case <-timeout:
			return store.Event{}, false
		}
	}
}

func testWatchCtx(t *testing.T, e *env) {
	w := e.watch()
	w.cancel()
	select {
	case err := <-w.done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch after cancel = %v, want context.Canceled", err)
		}
		w.done <- err // for the cleanup
	case <-time.After(eventWait):
		t.Fatalf("Watch did not return within %v of its context's end", eventWait)
	}

	ctx, cancel := context.WithTimeout(e.ctx, 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.st.Watch(ctx, func(store.Event) {}) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Watch with a deadline = %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(eventWait):
		t.Fatalf("Watch did not return within %v of its deadline", eventWait)
	}
}

func testWatchMany(t *testing.T, e *env) {
	w1, w2 := e.watch(), e.watch()
	b := e.ban(store.Ban{Jail: "manual", Subject: "net:192.0.2.41/32", Expires: e.now().Add(time.Hour), Reason: "manual"})
	w1.expect(store.Event{Kind: store.Banned, Ban: b})
	w2.expect(store.Event{Kind: store.Banned, Ban: b})
}
