// Package memstore is the embedded store.Store, mailguard's default
// (store.backend: memory): one process, state in memory, bans persisted under
// a directory.
//
// What survives a restart, and a kill -9: active bans, the ban times behind
// escalation (recidive), known devices. Each change to them is appended to a
// journal before the call returns; the page cache keeps it when the process
// dies, and Close fsyncs it. A janitor compacts the journal into a snapshot
// (temporary file, fsync, rename). What does not: failure windows (a restart
// forgets recent failures, at most maxretry−1 per subject per jail) and the
// Stats totals, which count from Open.
//
// Memory is bounded by what is live: a window keeps at most MaxRetry+1
// failure times, and the janitor frees windows, bans, escalation history and
// known devices once they have expired.
package memstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailguard/mailguard/store"
)

// ErrLocked is returned by Open when another process has the state
// directory open.
var ErrLocked = errors.New("state directory in use by another process")

// sweepEvery is how often the janitor frees expired entries.
const sweepEvery = time.Minute

// Options configure Open.
type Options struct {
	// Dir is the state directory (state_dir), created if missing (0700) and
	// locked while open. Empty: nothing is persisted.
	Dir string
	// Now is the clock every call is evaluated at. Nil: time.Now.
	Now func() time.Time
	// Log receives warnings (a torn journal line, a slow watcher, a failed
	// compaction). Nil: slog.Default().
	Log *slog.Logger
}

// Store is the embedded store. It is safe for concurrent use. The ctx of its
// methods is not consulted, except by Watch: every call is in memory, plus
// one write(2) for a ban, an unban or a known device when persisted.
type Store struct {
	now    func() time.Time
	log    *slog.Logger
	seed   maphash.Seed
	shards [shards]shard
	hub    hub
	totals sync.Map // jail → *totals
	totp   totpState
	share  sharing  // store.Sharing (share.go)
	audit  auditing // store.Auditing (audit.go)
	hold   holding  // store.Holding (hold.go)

	// maxWindow is the longest recidive window Hit has been given, in
	// nanoseconds: how long a manual ban's time is kept for escalation, with
	// minHistoryKeep as the floor.
	maxWindow atomic.Int64

	dir         string
	j           *journal // nil when not persisted
	lock        *os.File
	compactMu   sync.Mutex
	lastCompact atomic.Int64 // unix nanoseconds, real time

	closed atomic.Bool
	done   chan struct{} // closed by Close
	wg     sync.WaitGroup
}

type totals struct {
	failed, banned atomic.Int64
}

// Open returns a Store. With o.Dir set it locks the directory, loads the
// snapshot and replays the journals, then compacts them into a new snapshot.
// The Store runs a janitor goroutine until Close.
func Open(o Options) (*Store, error) {
	s := &Store{now: o.Now, log: o.Log, seed: maphash.MakeSeed(), dir: o.Dir, done: make(chan struct{})}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.hub.log = s.log
	for i := range s.shards {
		s.shards[i].init()
	}
	if s.dir != "" {
		if err := s.openDir(); err != nil {
			return nil, err
		}
	}
	s.lastCompact.Store(time.Now().UnixNano())
	s.wg.Add(1)
	go s.janitor()
	return s, nil
}

func (s *Store) openDir() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("memstore: create state dir %s: %w", s.dir, err)
	}
	lock, err := lockDir(s.dir)
	if err != nil {
		return err
	}
	gen, err := s.load()
	if err != nil {
		lock.Close()
		return err
	}
	s.lock = lock
	s.j = &journal{dir: s.dir, gen: gen}
	s.sweep()
	if err := s.compact(); err != nil {
		s.j.close()
		lock.Close()
		return err
	}
	return nil
}

// Close stops the janitor, fsyncs and closes the journal and releases the
// state directory. Later calls, and Close again, return store.ErrClosed.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return store.ErrClosed
	}
	close(s.done)
	s.wg.Wait()
	var errs []error
	if s.j != nil {
		errs = append(errs, s.j.close())
	}
	if s.lock != nil {
		if err := s.lock.Close(); err != nil {
			errs = append(errs, fmt.Errorf("memstore: release lock: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (s *Store) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.sweep()
		if s.j == nil {
			continue
		}
		size := s.j.bytes()
		if size >= compactSize || size > 0 && time.Since(time.Unix(0, s.lastCompact.Load())) >= compactEvery {
			if err := s.compact(); err != nil {
				s.log.Error("memstore: compaction", "err", err)
			}
		}
	}
}

// sweep frees every expired entry.
func (s *Store) sweep() {
	n := nanos(s.now())
	for i := range s.shards {
		s.shards[i].sweep(n)
	}
	s.totp.mu.Lock()
	s.totp.sweep(n)
	s.totp.mu.Unlock()
}

func (s *Store) shard(key string) *shard {
	return &s.shards[maphash.String(s.seed, key)%shards]
}

func (s *Store) totalsOf(jail string) *totals {
	if t, ok := s.totals.Load(jail); ok {
		return t.(*totals)
	}
	t, _ := s.totals.LoadOrStore(jail, &totals{})
	return t.(*totals)
}

// Check answers q from memory.
func (s *Store) Check(_ context.Context, q store.Query) (store.Answer, error) {
	if s.closed.Load() {
		return store.Answer{}, store.ErrClosed
	}
	n := nanos(s.now())
	var a store.Answer
	for _, subj := range q.Subjects {
		sh := s.shard(subj)
		sh.mu.RLock()
		for _, b := range sh.bans[subj] {
			if nanos(b.Expires) > n {
				a.Bans = append(a.Bans, b)
			}
		}
		sh.mu.RUnlock()
	}
	if q.Known != "" {
		sh := s.shard(q.Known)
		sh.mu.RLock()
		kn, ok := sh.known[q.Known]
		sh.mu.RUnlock()
		a.Known = ok && kn.exp > n
	}
	if len(q.Counts) > 0 {
		a.Counts = make([]int, len(q.Counts))
		for i, w := range q.Counts {
			sh := s.shard(w.Subject)
			sh.mu.RLock()
			if win := sh.windows[wkey{w.Jail, w.Subject}]; win != nil {
				a.Counts[i] = win.live(n, w.Span)
			}
			sh.mu.RUnlock()
		}
	}
	if q.TOTPUser != "" {
		s.checkTOTP(q, n, &a)
	}
	return a, nil
}

// Hit records a failure and bans at the threshold, under the subject's
// shard lock. A failure while the subject is already banned in the jail
// counts like any other; reaching MaxRetry again replaces the ban with the
// next, escalated one. A Settle Hit only reads the window (store.Hit).
func (s *Store) Hit(_ context.Context, h store.Hit) (store.HitResult, error) {
	if s.closed.Load() {
		return store.HitResult{}, store.ErrClosed
	}
	if h.MaxRetry <= 0 || h.Span <= 0 || h.Jail == "" || h.Subject == "" {
		return store.HitResult{}, fmt.Errorf("memstore: hit %s %s: jail, subject, a positive maxretry and span are required", h.Jail, h.Subject)
	}
	now := s.now()
	n := nanos(now)
	if w := int64(h.Recidive.Window); w > s.maxWindow.Load() {
		s.raiseMaxWindow(w)
	}
	k := wkey{h.Jail, h.Subject}
	sh := s.shard(h.Subject)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	w := sh.windows[k]
	if h.Settle {
		res := store.HitResult{}
		if w != nil {
			w.prune(n, h.Span)
			res.Count = len(w.times)
		}
		if h.BanTime <= 0 || res.Count+1 < h.MaxRetry {
			return res, nil
		}
		return s.hitBan(sh, k, h, now, res)
	}
	if w == nil {
		w = &window{}
		sh.windows[k] = w
	}
	w.span = h.Span
	w.prune(n, h.Span)
	m := s.memberHash(h.Member)
	if m != 0 && w.has(m) {
		return store.HitResult{Count: len(w.times)}, nil
	}
	w.add(n, m, h.MaxRetry+1)
	s.totalsOf(h.Jail).failed.Add(1)
	res := store.HitResult{Count: len(w.times)}
	if h.BanTime <= 0 || res.Count < h.MaxRetry {
		return res, nil
	}
	return s.hitBan(sh, k, h, now, res)
}

// hitBan makes the ban of h, which reached its threshold, escalated by the
// recidive history, and clears the window. The caller holds sh's lock.
func (s *Store) hitBan(sh *shard, k wkey, h store.Hit, now time.Time, res store.HitResult) (store.HitResult, error) {
	n := nanos(now)
	nth := 1
	if h.Recidive.Window > 0 {
		nth += sh.history[k].since(n - int64(h.Recidive.Window))
	}
	b := store.Ban{Jail: h.Jail, Subject: h.Subject, Created: now,
		Expires: now.Add(h.Recidive.Duration(h.BanTime, nth)), Nth: nth, Reason: h.Reason}
	if err := s.place(sh, b, n+int64(h.Recidive.Window)); err != nil {
		return res, fmt.Errorf("memstore: hit %s %s: %w", h.Jail, h.Subject, err)
	}
	delete(sh.windows, k)
	res.Ban = &b
	return res, nil
}

// memberHash is the 64-bit hash of a Hit's Member that windows keep (0: no
// member). Two distinct members collide with a chance of 2⁻⁶⁴; windows are
// not persisted, so the per-process seed is enough.
func (s *Store) memberHash(m string) uint64 {
	if m == "" {
		return 0
	}
	return maphash.String(s.seed, m) | 1
}

func (s *Store) raiseMaxWindow(w int64) {
	for {
		cur := s.maxWindow.Load()
		if w <= cur || s.maxWindow.CompareAndSwap(cur, w) {
			return
		}
	}
}

// place journals b, then makes it active, records it for escalation until
// keep and announces it. The caller holds sh's lock.
func (s *Store) place(sh *shard, b store.Ban, keep int64) error {
	if s.j != nil {
		if err := s.j.write(banRecord(b, keep)); err != nil {
			return err
		}
	}
	sh.putBan(b)
	sh.addHistory(wkey{b.Jail, b.Subject}, nanos(b.Created), keep)
	s.totalsOf(b.Jail).banned.Add(1)
	s.hub.emit(store.Banned, b)
	return nil
}

// Ban places (or replaces) b. Created defaults to now, Expires must be after
// it. Nth, when zero, is one more than the bans of (b.Jail, b.Subject)
// within the longest recidive window Hit has been given. The ban counts
// towards escalation for that window, and at least seven days.
func (s *Store) Ban(_ context.Context, b store.Ban) (store.Ban, error) {
	if s.closed.Load() {
		return store.Ban{}, store.ErrClosed
	}
	if b.Jail == "" || b.Subject == "" {
		return store.Ban{}, fmt.Errorf("memstore: ban %q in %q: jail and subject are required", b.Subject, b.Jail)
	}
	if b.Created.IsZero() {
		b.Created = s.now()
	}
	if !b.Expires.After(b.Created) {
		return store.Ban{}, fmt.Errorf("memstore: ban %s in %s: expires %s is not after created %s",
			b.Subject, b.Jail, b.Expires.Format(time.RFC3339), b.Created.Format(time.RFC3339))
	}
	created := nanos(b.Created)
	window := s.maxWindow.Load()
	keep := max(nanos(b.Expires), created+max(window, int64(minHistoryKeep)))
	sh := s.shard(b.Subject)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if b.Nth <= 0 {
		b.Nth = 1
		if window > 0 {
			b.Nth += sh.history[wkey{b.Jail, b.Subject}].since(created - window)
		}
	}
	if err := s.place(sh, b, keep); err != nil {
		return store.Ban{}, fmt.Errorf("memstore: ban %s in %s: %w", b.Subject, b.Jail, err)
	}
	return b, nil
}

// Unban lifts every jail's ban on subject.
func (s *Store) Unban(_ context.Context, subject store.Subject) ([]store.Ban, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	n := nanos(s.now())
	lifted := []store.Ban{}
	sh := s.shard(subject)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	bs, ok := sh.bans[subject]
	if !ok {
		return lifted, nil
	}
	if s.j != nil {
		if err := s.j.write(record{Op: opUnban, Subject: subject, Created: n}); err != nil {
			return nil, fmt.Errorf("memstore: unban %s: %w", subject, err)
		}
	}
	delete(sh.bans, subject)
	for _, b := range bs {
		if nanos(b.Expires) > n {
			lifted = append(lifted, b)
			s.hub.emit(store.Unbanned, b)
		}
	}
	return lifted, nil
}

// Bans lists the active bans, by subject then jail.
func (s *Store) Bans(_ context.Context) ([]store.Ban, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	n := nanos(s.now())
	out := []store.Ban{}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, bs := range sh.bans {
			for _, b := range bs {
				if nanos(b.Expires) > n {
					out = append(out, b)
				}
			}
		}
		sh.mu.RUnlock()
	}
	slices.SortFunc(out, func(a, b store.Ban) int {
		if c := strings.Compare(a.Subject, b.Subject); c != 0 {
			return c
		}
		return strings.Compare(a.Jail, b.Jail)
	})
	return out, nil
}

// Reset forgets the failures of subject in jail.
func (s *Store) Reset(_ context.Context, jail string, subject store.Subject) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	sh := s.shard(subject)
	sh.mu.Lock()
	delete(sh.windows, wkey{jail, subject})
	sh.mu.Unlock()
	return nil
}

// Remember records key as a known device for ttl (> 0). To spare the disk
// on every successful login, the journal is written only when the expiry
// moves by at least 1/64 of ttl: after a crash a device may be forgotten
// that much earlier.
func (s *Store) Remember(_ context.Context, key string, ttl time.Duration) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if key == "" || ttl <= 0 {
		return fmt.Errorf("memstore: remember %q for %v: a key and a positive ttl are required", key, ttl)
	}
	exp := nanos(s.now().Add(ttl))
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	kn := sh.known[key]
	kn.exp = exp
	if s.j != nil && exp-kn.saved >= int64(ttl/64) {
		if err := s.j.write(record{Op: opKnown, Key: key, Expires: exp}); err != nil {
			return fmt.Errorf("memstore: remember: %w", err)
		}
		kn.saved = exp
	}
	sh.known[key] = kn
	return nil
}

// Stats returns the counters of the named jails. Failing is counted over
// every window; TotalFailed and TotalBanned count from Open.
func (s *Store) Stats(_ context.Context, jails []string) (map[string]store.JailStats, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	n := nanos(s.now())
	out := make(map[string]store.JailStats, len(jails))
	for _, j := range jails {
		var st store.JailStats
		if t, ok := s.totals.Load(j); ok {
			st.TotalFailed = t.(*totals).failed.Load()
			st.TotalBanned = t.(*totals).banned.Load()
		}
		out[j] = st
	}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for k, w := range sh.windows {
			if st, ok := out[k.jail]; ok && w.live(n, w.span) > 0 {
				st.Failing++
				out[k.jail] = st
			}
		}
		sh.mu.RUnlock()
	}
	return out, nil
}

// sizes reports the entries held, for tests of the janitor.
func (s *Store) sizes() (windows, bans, history, known int) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		windows += len(sh.windows)
		for _, bs := range sh.bans {
			bans += len(bs)
		}
		history += len(sh.history)
		known += len(sh.known)
		sh.mu.RUnlock()
	}
	return windows, bans, history, known
}

var _ store.Store = (*Store)(nil)
