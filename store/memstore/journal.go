package memstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mailguard/mailguard/store"
)

// What lives in Dir:
//
//	lock            flock(2)ed while a Store has Dir open
//	snapshot.json   the state at a compaction, and the first journal to replay on top
//	journal.N       JSON lines, one per ban, unban and known device, appended
//	                before the call returns; N grows at each compaction
//
// Loading reads the snapshot and replays every journal from its generation on,
// in order. Replaying a record twice is harmless (bans and known devices are
// overwritten, ban times are a set), which is what lets compaction switch to a
// new journal first and copy the state afterwards without stopping writers.
const (
	lockName     = "lock"
	snapshotName = "snapshot.json"
	journalBase  = "journal."

	snapshotVersion = 1
	// compactSize is the journal size past which the janitor compacts.
	compactSize = 4 << 20
	// compactEvery is how often the janitor compacts a journal that has grown
	// at all.
	compactEvery = time.Hour
)

// record is one journal line.
type record struct {
	Op      string      `json:"op"` // "ban", "unban", "known"
	Jail    string      `json:"jail,omitempty"`
	Subject string      `json:"subject,omitempty"`
	Created int64       `json:"created,omitempty"` // unix nanoseconds
	Expires int64       `json:"expires,omitempty"` // ban end or known device end
	Nth     int         `json:"nth,omitempty"`
	Reason  string      `json:"reason,omitempty"`
	Keep    int64       `json:"keep,omitempty"` // ban: its time counts towards escalation until then
	Key     string      `json:"key,omitempty"`  // known device
	TOTP    *totpRecord `json:"totp,omitempty"`
}

const (
	opBan   = "ban"
	opUnban = "unban"
	opKnown = "known"
	opTOTP  = "totp" // a change of the TOTP state (totp.go)
)

func banRecord(b store.Ban, keep int64) record {
	return record{Op: opBan, Jail: b.Jail, Subject: b.Subject, Created: nanos(b.Created),
		Expires: nanos(b.Expires), Nth: b.Nth, Reason: b.Reason, Keep: keep}
}

func (r record) ban() store.Ban {
	return store.Ban{Jail: r.Jail, Subject: r.Subject, Created: time.Unix(0, r.Created),
		Expires: time.Unix(0, r.Expires), Nth: r.Nth, Reason: r.Reason}
}

type historyRecord struct {
	Jail    string  `json:"jail"`
	Subject string  `json:"subject"`
	Times   []int64 `json:"times"`
	Keep    int64   `json:"keep"`
	Span    int64   `json:"span"` // how long each time counts, in nanoseconds
}

type snapshot struct {
	Version int             `json:"version"`
	Journal uint64          `json:"journal"` // first journal generation to replay
	Written int64           `json:"written"` // unix nanoseconds, by the store's clock
	Bans    []record        `json:"bans"`
	History []historyRecord `json:"history"`
	Known   []record        `json:"known"`
	TOTP    []totpRecord    `json:"totp,omitempty"`
}

// journal is the append-only file of the current generation.
type journal struct {
	dir    string
	mu     sync.Mutex
	f      *os.File // nil before the first rotate and once closed
	gen    uint64
	size   int64
	closed bool
}

func journalPath(dir string, gen uint64) string {
	return filepath.Join(dir, journalBase+strconv.FormatUint(gen, 10))
}

// write appends r. Callers hold the lock of the shard r is about, so records
// of one subject are in the order their changes were made.
func (j *journal) write(r record) error {
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("memstore: encode journal record: %w", err)
	}
	line = append(line, '\n')
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return store.ErrClosed
	}
	n, err := j.f.Write(line)
	j.size += int64(n)
	if err != nil {
		return fmt.Errorf("memstore: write journal %s: %w", j.f.Name(), err)
	}
	return nil
}

// rotate makes a new generation the one written to and returns it.
func (j *journal) rotate() (uint64, error) {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return 0, store.ErrClosed
	}
	gen := j.gen + 1
	path := journalPath(j.dir, gen)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		j.mu.Unlock()
		return 0, fmt.Errorf("memstore: create journal %s: %w", path, err)
	}
	old := j.f
	j.f, j.gen, j.size = f, gen, 0
	j.mu.Unlock()
	if old != nil {
		err = errors.Join(old.Sync(), old.Close())
		if err != nil {
			return gen, fmt.Errorf("memstore: close journal %s: %w", old.Name(), err)
		}
	}
	return gen, nil
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.closed = true
	if j.f == nil {
		return nil
	}
	f := j.f
	j.f = nil
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("memstore: close journal %s: %w", f.Name(), err)
	}
	return nil
}

func (j *journal) bytes() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.size
}

// lockDir takes the exclusive lock of dir, without waiting.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("memstore: open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("memstore: lock %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("memstore: lock %s: %w", path, err)
	}
	return f, nil
}

// load reads the snapshot and replays the journals into s, and returns the
// highest journal generation seen.
func (s *Store) load() (uint64, error) {
	snapPath := filepath.Join(s.dir, snapshotName)
	var snap snapshot
	data, err := os.ReadFile(snapPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return 0, fmt.Errorf("memstore: read snapshot %s: %w", snapPath, err)
	default:
		if err := decodeSnapshot(data, &snap); err != nil {
			return 0, &CorruptError{File: snapPath, Err: err}
		}
	}
	for _, r := range snap.Bans {
		s.shard(r.Subject).putBan(r.ban())
	}
	for _, h := range snap.History {
		sh := s.shard(h.Subject)
		for _, t := range h.Times {
			sh.addHistory(wkey{h.Jail, h.Subject}, t, t+h.Span)
		}
		if hs := sh.history[wkey{h.Jail, h.Subject}]; hs != nil {
			hs.keep = max(hs.keep, h.Keep)
		}
	}
	for _, r := range snap.Known {
		s.shard(r.Key).known[r.Key] = known{exp: r.Expires, saved: r.Expires}
	}
	for i := range snap.TOTP {
		s.totp.apply(&snap.TOTP[i])
	}

	gens, err := journals(s.dir)
	if err != nil {
		return 0, err
	}
	last := snap.Journal
	for _, gen := range gens {
		last = max(last, gen)
		if gen < snap.Journal {
			continue // compacted into the snapshot; removed at the next compaction
		}
		if err := s.replay(journalPath(s.dir, gen)); err != nil {
			return 0, err
		}
	}
	return last, nil
}

// journals lists the journal generations in dir, ascending.
func journals(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("memstore: read state dir %s: %w", dir, err)
	}
	var gens []uint64
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), journalBase)
		if !ok {
			continue
		}
		gen, err := strconv.ParseUint(rest, 10, 64)
		if err != nil {
			continue // not ours
		}
		gens = append(gens, gen)
	}
	slices.Sort(gens)
	return gens, nil
}

// ErrCorrupt is wrapped by the error of Open (a *CorruptError) when a
// journal line or the snapshot cannot be read back: Check says what is
// damaged and Repair moves it aside.
var ErrCorrupt = errors.New("damaged state")

// CorruptError names the damaged file and, for a journal, the first damaged
// line.
type CorruptError struct {
	File string
	Line int // 0: the snapshot
	Err  error
}

func (e *CorruptError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("memstore: snapshot %s is corrupt: %v", e.File, e.Err)
	}
	return fmt.Sprintf("memstore: journal %s line %d is corrupt: %v", e.File, e.Line, e.Err)
}

func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

// decodeSnapshot decodes and checks a snapshot.
func decodeSnapshot(data []byte, snap *snapshot) error {
	if err := json.Unmarshal(data, snap); err != nil {
		return err
	}
	if snap.Version != snapshotVersion {
		return fmt.Errorf("version %d, want %d", snap.Version, snapshotVersion)
	}
	for _, r := range snap.Bans {
		if r.Op != opBan {
			return fmt.Errorf("ban record with op %q", r.Op)
		}
	}
	for i := range snap.TOTP {
		if err := snap.TOTP[i].check(); err != nil {
			return err
		}
	}
	return nil
}

// journalLine is one non-empty line of a journal, decoded and checked.
type journalLine struct {
	no       int // from 1
	text     []byte
	complete bool // ended by a newline
	rec      record
	err      error // not a valid record
}

// torn: the last line, without its newline, that does not decode: the end
// of a write cut short by a crash, not damage.
func (l journalLine) torn() bool { return l.err != nil && !l.complete }

// scanJournal calls fn for each non-empty line of data; fn returning false
// stops the scan.
func scanJournal(data []byte, fn func(journalLine) bool) {
	for no := 1; len(data) > 0; no++ {
		line, rest, complete := bytes.Cut(data, []byte{'\n'})
		data = rest
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		l := journalLine{no: no, text: line, complete: complete}
		if l.err = json.Unmarshal(line, &l.rec); l.err == nil {
			l.err = l.rec.check()
		}
		if !fn(l) {
			return
		}
	}
}

// replay applies the records of one journal. A torn last line is dropped
// with a warning. Any other bad line is a *CorruptError.
func (s *Store) replay(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("memstore: read journal %s: %w", path, err)
	}
	scanJournal(data, func(l journalLine) bool {
		switch {
		case l.torn():
			s.log.Warn("memstore: dropping the torn last line of a journal (a crash cut a write short)",
				"file", path, "line", l.no, "bytes", len(l.text))
		case l.err != nil:
			err = &CorruptError{File: path, Line: l.no, Err: l.err}
			return false
		default:
			s.apply(l.rec)
		}
		return true
	})
	return err
}

// check tells whether r can be replayed.
func (r record) check() error {
	switch r.Op {
	case opBan:
		if r.Jail == "" || r.Subject == "" {
			return errors.New("ban record without jail or subject")
		}
	case opUnban:
		if r.Subject == "" {
			return errors.New("unban record without subject")
		}
	case opKnown:
		if r.Key == "" {
			return errors.New("known record without key")
		}
	case opTOTP:
		if r.TOTP == nil {
			return errors.New("totp record without its change")
		}
		return r.TOTP.check()
	default:
		return fmt.Errorf("unknown op %q", r.Op)
	}
	return nil
}

// apply replays one checked record. It runs before the store is shared, so
// it takes no locks.
func (s *Store) apply(r record) {
	switch r.Op {
	case opBan:
		sh := s.shard(r.Subject)
		sh.putBan(r.ban())
		sh.addHistory(wkey{r.Jail, r.Subject}, r.Created, r.Keep)
	case opUnban:
		delete(s.shard(r.Subject).bans, r.Subject)
	case opKnown:
		s.shard(r.Key).known[r.Key] = known{exp: r.Expires, saved: r.Expires}
	case opTOTP:
		s.totp.apply(r.TOTP)
	}
}

// compact switches to a new journal, writes the state to a new snapshot
// (temporary file, fsync, rename) and removes the journals it covers.
// Writers are not stopped: see the comment at the top of this file.
func (s *Store) compact() error {
	if s.j == nil {
		return nil
	}
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	gen, err := s.j.rotate()
	if err != nil {
		return err
	}
	snap := s.capture(gen)
	data, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("memstore: encode snapshot: %w", err)
	}
	path := filepath.Join(s.dir, snapshotName)
	if err := writeFileSync(path, data); err != nil {
		return err
	}
	gens, err := journals(s.dir)
	if err != nil {
		return err
	}
	for _, g := range gens {
		if g < gen {
			if err := os.Remove(journalPath(s.dir, g)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("memstore: remove compacted journal: %w", err)
			}
		}
	}
	s.lastCompact.Store(time.Now().UnixNano())
	return nil
}

// capture copies the persistent state, one shard at a time.
func (s *Store) capture(gen uint64) snapshot {
	n := nanos(s.now())
	snap := snapshot{Version: snapshotVersion, Journal: gen, Written: n,
		Bans: []record{}, History: []historyRecord{}, Known: []record{}}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, bs := range sh.bans {
			for _, b := range bs {
				if nanos(b.Expires) > n {
					snap.Bans = append(snap.Bans, banRecord(b, 0))
				}
			}
		}
		for k, h := range sh.history {
			if h.keep > n && len(h.times) > 0 {
				snap.History = append(snap.History, historyRecord{Jail: k.jail, Subject: k.subject,
					Times: slices.Clone(h.times), Keep: h.keep, Span: h.span})
			}
		}
		for key, kn := range sh.known {
			if kn.exp > n {
				snap.Known = append(snap.Known, record{Op: opKnown, Key: key, Expires: kn.exp})
			}
		}
		sh.mu.RUnlock()
	}
	snap.TOTP = s.totp.capture(n)
	return snap
}

// writeFileSync replaces path with data atomically and durably.
func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("memstore: write snapshot %s: %w", tmp, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("memstore: write snapshot %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("memstore: write snapshot %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("memstore: sync state dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("memstore: sync state dir %s: %w", d.Name(), err)
	}
	return nil
}
