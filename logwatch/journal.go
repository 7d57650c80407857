package logwatch

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mailguard/mailguard/internal/dedup"
)

// journalRestart is how long a journalctl that exited waits to be started
// again.
const journalRestart = 5 * time.Second

// Journal follows the systemd journal through `journalctl -f -o json`,
// delivering each entry as a Line "HOSTNAME IDENTIFIER[PID]: MESSAGE" (the
// shape fail2ban's systemd backend gives its filters), with Line.Time set
// from the entry. The cursor of the last delivered entry is kept in
// StateDir, so a restart resumes after it (within Backlog, as for files).
type Journal struct {
	// Matches are journalctl matches, e.g. "_SYSTEMD_UNIT=postfix@-.service";
	// none means the whole journal.
	Matches []string
	// StateDir, if set, keeps the cursor across restarts; without it, or
	// without a stored cursor, following starts at the end.
	StateDir string
	// Backlog: a cursor saved longer ago than this is not resumed from
	// (following starts at the end and says so). Zero means DefaultBacklog.
	Backlog time.Duration
	// MaxLineBytes bounds a delivered line (and a journalctl output line:
	// longer ones are skipped and logged). Zero means DefaultMaxLineBytes.
	MaxLineBytes int
	// Command is the journalctl program; empty means "journalctl".
	Command string
	// Logger nil means slog.Default(); Now nil means time.Now.
	Logger *slog.Logger
	Now    func() time.Time

	runner
}

// journalCursor is the state file of a journal source.
type journalCursor struct {
	Matches []string  `json:"matches"`
	Cursor  string    `json:"cursor"`
	SavedAt time.Time `json:"saved_at"`
}

// Start checks that journalctl can be run, then follows the journal in a
// goroutine, calling deliver for every entry, in order.
func (j *Journal) Start(ctx context.Context, deliver func(Line)) error {
	if j.started() {
		return errors.New("logwatch: journal already started")
	}
	if deliver == nil {
		return errors.New("logwatch: nil deliver func")
	}
	cmd := j.Command
	if cmd == "" {
		cmd = "journalctl"
	}
	path, err := exec.LookPath(cmd)
	if err != nil {
		err = fmt.Errorf("logwatch: journal: %w", err)
		j.setHealth(err)
		return err
	}
	if j.StateDir != "" {
		if fi, err := os.Stat(j.StateDir); err != nil {
			return fmt.Errorf("logwatch: state dir: %w", err)
		} else if !fi.IsDir() {
			return fmt.Errorf("logwatch: state dir %s: not a directory", j.StateDir)
		}
	}
	jr := &journalRun{j: j, cmd: path, deliver: deliver, maxLine: j.MaxLineBytes, log: j.Logger, now: j.Now}
	if jr.maxLine <= 0 {
		jr.maxLine = DefaultMaxLineBytes
	}
	if jr.log == nil {
		jr.log = slog.Default()
	}
	jr.log = jr.log.With("journal", strings.Join(j.Matches, " "))
	if jr.now == nil {
		jr.now = time.Now
	}
	backlog := j.Backlog
	if backlog <= 0 {
		backlog = DefaultBacklog
	}
	if j.StateDir != "" {
		c, err := loadCursor(j.stateFile())
		switch {
		case err != nil:
			jr.log.Warn("logwatch: ignoring stored journal cursor, starting at the end", "err", err)
		case c.Cursor != "" && jr.now().Sub(c.SavedAt) > backlog:
			jr.log.Warn("logwatch: journal cursor older than the backlog, starting at the end", "age", jr.now().Sub(c.SavedAt).Round(time.Second))
		default:
			jr.cursor = c.Cursor
		}
	}
	j.start(ctx, jr.run)
	return nil
}

func (j *Journal) stateFile() string {
	h := sha256.Sum256([]byte(strings.Join(j.Matches, "\x00")))
	return filepath.Join(j.StateDir, "logwatch-journal-"+hex.EncodeToString(h[:6])+".json")
}

func loadCursor(path string) (journalCursor, error) {
	var c journalCursor
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("logwatch: read cursor: %w", err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return journalCursor{}, fmt.Errorf("logwatch: cursor file %s: %w", path, err)
	}
	return c, nil
}

// journalRun is one Start's state, owned by its goroutine.
type journalRun struct {
	j       *Journal
	cmd     string
	deliver func(Line)
	maxLine int
	log     *slog.Logger
	now     func() time.Time
	cursor  string
	saved   string
	tooLong dedup.Limiter
}

func (jr *journalRun) run(ctx context.Context) {
	defer jr.save()
	for {
		err := jr.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("journalctl exited")
		}
		jr.j.setHealth(fmt.Errorf("logwatch: journal: %w", err))
		jr.log.Warn("logwatch: journalctl stopped, starting it again", "err", err, "in", journalRestart)
		t := time.NewTimer(journalRestart)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (jr *journalRun) args() []string {
	args := []string{"--follow", "--output=json", "--no-pager", "--quiet"}
	if jr.cursor != "" {
		args = append(args, "--after-cursor="+jr.cursor)
	} else {
		args = append(args, "--lines=0")
	}
	return append(args, jr.j.Matches...)
}

// once runs journalctl until it exits or ctx ends.
func (jr *journalRun) once(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, jr.cmd, jr.args()...)
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 4096}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	jr.j.setHealth(nil)
	r := bufio.NewReaderSize(out, 64<<10)
	readErr := jr.read(r)
	if readErr != nil {
		_ = cmd.Process.Kill()
	}
	waitErr := cmd.Wait()
	if msg := strings.TrimSpace(stderr.String()); msg != "" && ctx.Err() == nil {
		return fmt.Errorf("%v: %s", waitErr, msg)
	}
	if readErr != nil {
		return readErr
	}
	return waitErr
}

// read decodes journalctl's JSON lines until EOF, saving the cursor whenever
// the output so far has been delivered.
func (jr *journalRun) read(r *bufio.Reader) error {
	maxRaw := 4*jr.maxLine + 8192 // room for the other fields
	for {
		raw, err := readLimited(r, maxRaw)
		if errors.Is(err, errTooLong) {
			// A client can make Postfix log long lines: one line per 5 s.
			if ok, n := jr.tooLong.Allow("too-long", jr.now()); ok {
				jr.log.Warn("logwatch: journal entry too long, skipped", "limit", maxRaw, "suppressed", n)
			}
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if len(bytes.TrimSpace(raw)) > 0 {
			jr.entry(raw)
		}
		if r.Buffered() == 0 {
			jr.save()
		}
	}
}

var errTooLong = errors.New("line too long")

// readLimited reads one line, never holding more than limit bytes of it.
func readLimited(r *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		part, err := r.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(part) > limit {
				tooLong, line = true, nil
			} else {
				line = append(line, part...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if tooLong {
			return nil, errTooLong
		}
		return line, nil
	}
}

// entry delivers one journal entry.
func (jr *journalRun) entry(raw []byte) {
	var e map[string]json.RawMessage
	if err := json.Unmarshal(raw, &e); err != nil {
		jr.log.Warn("logwatch: journal entry is not JSON, skipped", "err", err)
		return
	}
	field := func(name string) []byte {
		v, ok := e[name]
		if !ok {
			return nil
		}
		var s string
		if json.Unmarshal(v, &s) == nil {
			return []byte(s)
		}
		var b []byte // binary fields are arrays of byte values
		var nums []int
		if json.Unmarshal(v, &nums) == nil {
			for _, n := range nums {
				b = append(b, byte(n))
			}
		}
		return b
	}
	var text []byte
	if h := field("_HOSTNAME"); len(h) > 0 {
		text = append(append(text, h...), ' ')
	}
	if id := field("SYSLOG_IDENTIFIER"); len(id) > 0 {
		text = append(text, id...)
		if pid := field("_PID"); len(pid) > 0 {
			text = append(append(append(text, '['), pid...), ']')
		}
		text = append(text, ": "...)
	}
	text = append(text, field("MESSAGE")...)
	l := Line{Path: "journal", Text: text}
	if len(l.Text) > jr.maxLine {
		l.Text, l.Truncated = l.Text[:jr.maxLine], true
	}
	if us, err := strconv.ParseInt(string(field("__REALTIME_TIMESTAMP")), 10, 64); err == nil {
		l.Time = time.UnixMicro(us)
	}
	jr.deliver(l)
	if c := field("__CURSOR"); len(c) > 0 {
		jr.cursor = string(c)
	}
}

func (jr *journalRun) save() {
	if jr.j.StateDir == "" || jr.cursor == "" || jr.cursor == jr.saved {
		return
	}
	b, err := json.Marshal(journalCursor{Matches: jr.j.Matches, Cursor: jr.cursor, SavedAt: jr.now()})
	if err == nil {
		err = writeAtomic(jr.j.StateDir, jr.j.stateFile(), b)
	}
	if err != nil {
		jr.log.Warn("logwatch: journal cursor not saved", "err", err)
		return
	}
	jr.saved = jr.cursor
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.n -= k
		_, _ = l.w.Write(p[:k])
	}
	return len(p), nil
}
