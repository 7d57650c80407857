// Package logwatch follows log files as fail2ban does, and better: across
// rotation by rename (the old file is read to its end, then the new one) and
// by copytruncate (the file shrinks or its first bytes change: restart at 0,
// after reading what was left in the copy NAME.1), woken by inotify
// (fsnotify) with a polling safety net, remembering the read position per file
// in a state directory so that across a restart no line is read twice and,
// within a bounded backlog, none is lost.
//
// Lines are bytes: invalid UTF-8 is passed through untouched, and a line
// longer than MaxLineBytes is cut and marked Truncated, so a hostile writer
// cannot make the follower hold unbounded memory.
package logwatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Defaults of the Follower's fields; config refers to these.
const (
	// DefaultBacklog bounds how old a remembered position may be for the
	// lines written while mailguard was down to still be read on start
	// (logwatch.backlog).
	DefaultBacklog = 10 * time.Minute
	// DefaultMaxBacklogBytes bounds how much written-meanwhile text is read
	// on start.
	DefaultMaxBacklogBytes = 16 << 20
	// DefaultMaxLineBytes is the longest line delivered whole.
	DefaultMaxLineBytes = 16 << 10
	// DefaultPollInterval is how often the file is checked without an
	// inotify event (the safety net, or the only way when inotify fails).
	DefaultPollInterval = time.Second
)

// RotatedSuffix names the file a rotated log is renamed (or copied) to:
// logrotate's and newsyslog's first generation.
const RotatedSuffix = ".1"

// ErrNotRegular is returned (wrapped) for a path that is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// Line is one line of a followed file, without its newline.
type Line struct {
	// Path is the Follower's Path (also for the rest of a rotated file).
	Path string
	// Text is the line's bytes as written: possibly invalid UTF-8. It is
	// the receiver's to keep.
	Text []byte
	// Time is when the journal recorded the entry; zero for files (the
	// time is in the text, for the filter's datepattern).
	Time time.Time
	// Truncated is set when the line was longer than MaxLineBytes: Text
	// holds its first MaxLineBytes bytes, the rest was dropped.
	Truncated bool
}

// Follower follows one file. Set the fields, then call Start once; Stop
// joins its goroutines. Zero values mean the defaults above.
type Follower struct {
	// Path is the file to follow. It may be missing at start (it is
	// followed once created; Health says it is missing meanwhile).
	Path string
	// StateDir, if set, is where the read position is kept across
	// restarts; with no StateDir (or no stored position) following starts
	// at the end of the file.
	StateDir string
	// FromStart starts at the beginning when no position is known.
	FromStart bool
	// PollInterval is how often the file is checked besides inotify.
	PollInterval time.Duration
	// NoNotify disables inotify: the file is only polled.
	NoNotify bool
	// MaxLineBytes is the longest line delivered whole.
	MaxLineBytes int
	// Backlog and MaxBacklogBytes bound what is read on start of the text
	// written while mailguard was down: if the stored position is older
	// than Backlog, or more than MaxBacklogBytes were written since, the
	// follower starts at the end instead and logs how many bytes it skipped.
	Backlog         time.Duration
	MaxBacklogBytes int64
	// Logger receives rotation, skip and error reports; nil means
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock (for the backlog age); nil means time.Now.
	Now func() time.Time

	runner
}

// follow is the state of one Start: owned by its goroutine.
type follow struct {
	path      string
	stateDir  string
	maxLine   int
	poll      time.Duration
	log       *slog.Logger
	now       func() time.Time
	backlog   time.Duration
	deliver   func(Line)
	setHealth func(error)

	cur       *os.File
	id        fileID
	off       int64 // bytes read from cur
	committed int64 // offset after the last delivered line
	buf       []byte
	skipping  bool   // dropping the rest of an over-long line
	next      int64  // where to start in the next file opened (then 0)
	headBuf   []byte // the file's first bytes as read (up to headBytes)
	headLen   int
	head      string
	saved     position
	chunk     []byte
}

// Start checks that the source can be read, then follows it in a goroutine,
// calling deliver for every complete line, one at a time, in order. It
// returns an error for a path that exists but is not a readable regular
// file, or is a symbolic link to nothing, and for an unusable StateDir. A
// missing file is not an error: it is followed once created.
func (f *Follower) Start(ctx context.Context, deliver func(Line)) error {
	if f.started() {
		return errors.New("logwatch: follower already started")
	}
	if deliver == nil {
		return errors.New("logwatch: nil deliver func")
	}
	w := &follow{
		path:     filepath.Clean(f.Path),
		stateDir: f.StateDir,
		maxLine:  f.MaxLineBytes,
		poll:     f.PollInterval,
		log:      f.Logger,
		now:      f.Now,
		deliver:  deliver,
		chunk:    make([]byte, 64<<10),
	}
	if w.maxLine <= 0 {
		w.maxLine = DefaultMaxLineBytes
	}
	if w.poll <= 0 {
		w.poll = DefaultPollInterval
	}
	if w.log == nil {
		w.log = slog.Default()
	}
	w.log = w.log.With("log", f.Path)
	if w.now == nil {
		w.now = time.Now
	}
	w.setHealth = f.setHealth
	backlog, maxBacklog := f.Backlog, f.MaxBacklogBytes
	if backlog <= 0 {
		backlog = DefaultBacklog
	}
	if maxBacklog <= 0 {
		maxBacklog = DefaultMaxBacklogBytes
	}
	w.backlog = backlog

	if err := checkSource(w.path); err != nil {
		f.setHealth(err)
		return err
	}
	if w.stateDir != "" {
		if fi, err := os.Stat(w.stateDir); err != nil {
			return fmt.Errorf("logwatch: state dir: %w", err)
		} else if !fi.IsDir() {
			return fmt.Errorf("logwatch: state dir %s: not a directory", w.stateDir)
		}
	}
	if err := w.resume(f.FromStart, backlog, maxBacklog); err != nil {
		w.close()
		f.setHealth(err)
		return err
	}
	if w.cur == nil {
		f.setHealth(fmt.Errorf("logwatch: waiting for %s: %w", w.path, fs.ErrNotExist))
	}

	var watcher *fsnotify.Watcher
	if !f.NoNotify {
		var err error
		watcher, err = fsnotify.NewWatcher()
		if err == nil {
			err = watcher.Add(filepath.Dir(w.path))
			if err != nil {
				watcher.Close()
				watcher = nil
			}
		}
		if err != nil {
			w.log.Warn("logwatch: inotify unavailable, polling", "interval", w.poll, "err", err)
		}
	}

	f.start(ctx, func(ctx context.Context) { w.run(ctx, watcher) })
	return nil
}

// checkSource is the start-time check: a missing file is fine, anything
// there that cannot be read as a regular file is not.
func checkSource(path string) error {
	lfi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("logwatch: %w", err)
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) && lfi.Mode()&fs.ModeSymlink != 0 {
		target, _ := os.Readlink(path)
		return fmt.Errorf("logwatch: %s is a symbolic link to %q, which does not exist: %w", path, target, err)
	}
	if err != nil {
		return fmt.Errorf("logwatch: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("logwatch: %s: %w (%s)", path, ErrNotRegular, fi.Mode().Type())
	}
	fh, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("logwatch: %w", err)
	}
	return fh.Close()
}

// resume decides where reading starts. With no stored position: at the end
// (or the beginning with fromStart). With one: the same file (inode and
// first bytes) resumes at the stored offset; a file rotated away is looked
// for as NAME.1 (same first bytes) and its rest is read before the new file,
// which is then read from its beginning. Either way, if the position is older
// than backlog or more than maxBacklog bytes were written since, reading
// starts at the end instead, and the skipped byte count is logged.
func (w *follow) resume(fromStart bool, backlog time.Duration, maxBacklog int64) error {
	cur, fi, err := openRegular(w.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var p position
	var ok bool
	if w.stateDir != "" {
		p, ok, err = loadPosition(w.stateDir, w.path)
		if err != nil {
			w.log.Warn("logwatch: ignoring stored position, starting at the end", "err", err)
			ok, fromStart = false, false
		}
	}
	if !ok {
		// A file created later is read from its beginning (w.next is 0).
		if cur != nil {
			start := fi.Size()
			if fromStart {
				start = 0
			}
			w.use(cur, fi, start)
		}
		return nil
	}
	age := w.now().Sub(p.SavedAt)
	fresh := age <= backlog
	if cur != nil && idOf(fi) == (fileID{p.Dev, p.Ino}) && fi.Size() >= p.Offset && sameHead(cur, p) {
		grew := fi.Size() - p.Offset
		if !fresh || grew > maxBacklog {
			w.log.Warn("logwatch: backlog too old or too large, starting at the end", "skipped_bytes", grew, "age", age.Round(time.Second))
			w.use(cur, fi, fi.Size())
			return nil
		}
		w.use(cur, fi, p.Offset)
		return nil
	}
	// The file was rotated away (or replaced) while we were down.
	budget := maxBacklog
	old, ofi, err := openRegular(w.path + RotatedSuffix)
	if err == nil && ofi.Size() >= p.Offset && (p.HeadLen > 0 || idOf(ofi) == (fileID{p.Dev, p.Ino})) && sameHead(old, p) {
		rest := ofi.Size() - p.Offset
		if fresh && rest <= budget {
			budget -= rest
			w.log.Info("logwatch: reading the rest of the rotated file", "file", old.Name(), "bytes", rest)
			w.use(old, ofi, p.Offset)
		} else {
			w.log.Warn("logwatch: backlog too old or too large, skipping the rest of the rotated file", "file", old.Name(), "skipped_bytes", rest, "age", age.Round(time.Second))
			old.Close()
		}
	} else if old != nil {
		old.Close()
	}
	if cur == nil {
		return nil
	}
	start := int64(0)
	if !fresh || fi.Size() > budget {
		w.log.Warn("logwatch: backlog too old or too large, starting at the end", "skipped_bytes", fi.Size(), "age", age.Round(time.Second))
		start = fi.Size()
	}
	if w.cur != nil {
		cur.Close() // reopened when the old one is done
		w.next = start
		return nil
	}
	w.use(cur, fi, start)
	return nil
}

func openRegular(path string) (*os.File, fs.FileInfo, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("logwatch: %w", err)
	}
	fi, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, nil, fmt.Errorf("logwatch: %w", err)
	}
	if !fi.Mode().IsRegular() {
		fh.Close()
		return nil, nil, fmt.Errorf("logwatch: %s: %w", path, ErrNotRegular)
	}
	return fh, fi, nil
}

// use makes fh the current file, read from off.
func (w *follow) use(fh *os.File, fi fs.FileInfo, off int64) {
	if w.cur != nil && w.cur != fh {
		w.cur.Close()
	}
	if _, err := fh.Seek(off, io.SeekStart); err != nil {
		w.log.Warn("logwatch: seek", "err", err)
		off = 0
	}
	w.cur, w.id, w.off, w.committed = fh, idOf(fi), off, off
	w.buf, w.skipping, w.headLen, w.head, w.headBuf = w.buf[:0], false, 0, "", w.headBuf[:0]
	if off > 0 {
		// Starting inside the file: what precedes off is its head.
		buf := make([]byte, min(off, headBytes))
		if n, _ := fh.ReadAt(buf, 0); n == len(buf) {
			w.headBuf = buf
		}
		w.ensureHead()
	}
}

func (w *follow) close() {
	if w.cur != nil {
		w.cur.Close()
		w.cur = nil
	}
}

func (w *follow) run(ctx context.Context, watcher *fsnotify.Watcher) {
	var events chan fsnotify.Event
	var errs chan error
	if watcher != nil {
		events, errs = watcher.Events, watcher.Errors
		defer watcher.Close()
	}
	defer w.close()
	tick := time.NewTicker(w.poll)
	defer tick.Stop()
	for {
		again := w.step(ctx)
		w.save(false)
		if again && ctx.Err() == nil {
			continue
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				w.save(true)
				return
			case <-tick.C:
				break wait
			case ev, ok := <-events:
				if !ok {
					events = nil
					continue
				}
				// The followed name, and its rotated name: a writer may
				// still write to the old file after the rename.
				if name := filepath.Clean(ev.Name); name == w.path || name == w.path+RotatedSuffix {
					break wait
				}
			case err, ok := <-errs:
				if !ok {
					errs = nil
					continue
				}
				w.log.Warn("logwatch: inotify error, the poll goes on", "err", err)
			}
		}
	}
}

// step handles truncation, reads what is new, then handles rotation. It
// returns true when it should run again at once: the file was rotated away
// but its old self still gave lines on this read, so it is read once more
// before switching (a writer that has not reopened its log yet).
func (w *follow) step(ctx context.Context) bool {
	fi, err := os.Stat(w.path)
	var got int64
	if w.cur != nil {
		if err == nil && fi.Mode().IsRegular() && idOf(fi) == w.id && (fi.Size() < w.off || !w.sameHead()) {
			// Checked before reading: a file truncated and rewritten past
			// our offset must not be read from the middle.
			w.log.Info("logwatch: file truncated (copytruncate), reading it from the start", "offset", w.off, "size", fi.Size())
			w.restOfCopy(ctx)
			w.use(w.cur, fi, 0)
		}
		before := w.off
		if err := w.readAll(ctx); err != nil {
			w.setHealth(err)
			return false
		}
		got = w.off - before
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Renamed away and not yet recreated: keep the old file.
		if w.cur == nil {
			w.setHealth(fmt.Errorf("logwatch: waiting for %s: %w", w.path, fs.ErrNotExist))
		}
		return false
	case err != nil:
		w.setHealth(fmt.Errorf("logwatch: %w", err))
		return false
	case !fi.Mode().IsRegular():
		w.setHealth(fmt.Errorf("logwatch: %s: %w", w.path, ErrNotRegular))
		return false
	}
	if w.cur != nil && idOf(fi) == w.id {
		w.setHealth(nil)
		return false
	}
	if w.cur != nil {
		if got > 0 {
			return true // the old file still grows: read it once more first
		}
		// Rotated by rename: the old file was read to its end.
		w.flush()
		w.log.Info("logwatch: file rotated, following the new one", "offset", w.off)
		w.close()
	}
	fh, nfi, err := openRegular(w.path)
	if err != nil {
		w.setHealth(err)
		return false
	}
	start := w.next
	if start > nfi.Size() {
		start = 0
	}
	w.next = 0
	w.use(fh, nfi, start)
	w.setHealth(nil)
	if err := w.readAll(ctx); err != nil {
		w.setHealth(err)
	}
	return false
}

// restOfCopy reads, after a copytruncate, what the copy NAME.1 holds past the
// last delivered line, so the lines written between our last read and the
// truncation are not lost.
func (w *follow) restOfCopy(ctx context.Context) {
	w.ensureHead()
	fh, fi, err := openRegular(w.path + RotatedSuffix)
	if err != nil {
		return
	}
	defer fh.Close()
	if fi.Size() <= w.committed || !sameHead(fh, position{HeadLen: w.headLen, Head: w.head}) {
		return
	}
	if _, err := fh.Seek(w.committed, io.SeekStart); err != nil {
		return
	}
	orig := w.cur
	w.cur, w.off, w.buf, w.skipping = fh, w.committed, w.buf[:0], false
	if err := w.readAll(ctx); err != nil {
		w.log.Warn("logwatch: reading the copy", "file", fh.Name(), "err", err)
	}
	w.flush()
	w.cur = orig
}

// readAll reads cur to its current end, delivering complete lines.
func (w *follow) readAll(ctx context.Context) error {
	for ctx.Err() == nil {
		n, err := w.cur.Read(w.chunk)
		if n > 0 {
			w.feed(w.chunk[:n])
		}
		if errors.Is(err, io.EOF) || n == 0 && err == nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("logwatch: read %s: %w", w.cur.Name(), err)
		}
	}
	return nil
}

// feed splits data into lines, holding back an incomplete last line and
// cutting over-long ones.
func (w *follow) feed(data []byte) {
	if w.off < headBytes && int64(len(w.headBuf)) == w.off {
		w.headBuf = append(w.headBuf, data[:min(len(data), headBytes-int(w.off))]...)
	}
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if w.skipping {
			if i < 0 {
				w.off += int64(len(data))
				w.committed = w.off
				return
			}
			w.off += int64(i + 1)
			w.committed = w.off
			data = data[i+1:]
			w.skipping = false
			continue
		}
		if i < 0 {
			if room := w.maxLine - len(w.buf); len(data) > room {
				w.emit(append(w.buf, data[:room]...), true)
				w.off += int64(len(data))
				w.committed = w.off
				w.skipping = true
				return
			}
			w.buf = append(w.buf, data...)
			w.off += int64(len(data))
			return
		}
		seg := data[:i]
		if len(w.buf)+len(seg) > w.maxLine {
			w.emit(append(w.buf, seg[:w.maxLine-len(w.buf)]...), true)
		} else {
			w.emit(append(w.buf, seg...), false)
		}
		w.off += int64(i + 1)
		w.committed = w.off
		data = data[i+1:]
	}
}

// flush delivers a last line that has no newline (its file is finished).
func (w *follow) flush() {
	if len(w.buf) > 0 {
		w.emit(w.buf, false)
		w.committed = w.off
	}
	w.skipping = false
}

func (w *follow) emit(text []byte, truncated bool) {
	w.deliver(Line{Path: w.path, Text: bytes.Clone(text), Truncated: truncated})
	w.buf = w.buf[:0]
}

// ensureHead remembers the hash of the file's first bytes, from the bytes
// read (hashing the file later could see a file already rewritten).
func (w *follow) ensureHead() {
	if len(w.headBuf) > w.headLen {
		w.headLen, w.head = len(w.headBuf), hashBytes(w.headBuf)
	}
}

func (w *follow) sameHead() bool {
	w.ensureHead()
	return sameHead(w.cur, position{HeadLen: w.headLen, Head: w.head})
}

// save writes the position when it moved, when the stored one is getting
// old (its age decides the backlog on start), or when forced (on stop).
func (w *follow) save(force bool) {
	if w.stateDir == "" || w.cur == nil {
		return
	}
	w.ensureHead()
	now := w.now()
	p := position{Path: w.path, Dev: w.id.dev, Ino: w.id.ino, Offset: w.committed, HeadLen: w.headLen, Head: w.head}
	last := w.saved
	last.SavedAt = time.Time{}
	if !force && p == last && now.Sub(w.saved.SavedAt) < w.backlog/2 {
		return
	}
	p.SavedAt = now
	if err := savePosition(w.stateDir, p); err != nil {
		w.log.Warn("logwatch: position not saved", "err", err)
		return
	}
	w.saved = p
}
