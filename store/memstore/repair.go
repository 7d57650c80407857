package memstore

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Damage is one damaged journal line, or a damaged snapshot (Line 0).
type Damage struct {
	File string
	Line int
	Err  error
	// Torn: the last line of a journal, cut short by a crash; Open drops it
	// by itself, so it stops nothing.
	Torn bool
	// Op is the record's kind ("ban", "unban", "known") when it can be told,
	// else "".
	Op string
}

// Report is what Check found and what Repair did.
type Report struct {
	Dir      string
	Journals int // journal files read
	Records  int // good records in them
	Damaged  []Damage
	// Quarantine lists the files Repair wrote the damaged lines (or the
	// damaged snapshot) to.
	Quarantine []string
}

// Stops tells whether the damage stops Open: anything but a torn last line.
func (r Report) Stops() bool {
	for _, d := range r.Damaged {
		if !d.Torn {
			return true
		}
	}
	return false
}

// LostBans counts the ban records among the damaged lines (for lines that do
// not decode, those that look like one), and tells whether a damaged
// snapshot lost every ban it held.
func (r Report) LostBans() (n int, snapshot bool) {
	for _, d := range r.Damaged {
		if d.Line == 0 {
			snapshot = true
		} else if d.Op == opBan {
			n++
		}
	}
	return n, snapshot
}

// quarantineSuffix is added to a damaged file's name for the file that
// keeps its damaged lines.
const quarantineSuffix = ".damaged"

// Check reads the state in dir as Open would and reports every damaged
// line, without changing anything. It may run while a daemon has dir open
// (the last line of the journal being written may then look torn).
func Check(dir string) (Report, error) {
	return scan(dir, false)
}

// Repair moves every damaged journal line (and a torn last line) to
// JOURNAL.damaged beside its journal, and a damaged snapshot to
// snapshot.json.damaged, so that Open works again. The journals are
// rewritten atomically. It takes dir's lock: with a daemon running it
// fails with ErrLocked.
func Repair(dir string) (Report, error) {
	lock, err := lockDir(dir)
	if err != nil {
		return Report{Dir: dir}, err
	}
	defer lock.Close()
	return scan(dir, true)
}

func scan(dir string, repair bool) (Report, error) {
	rep := Report{Dir: dir}
	if _, err := os.Stat(dir); err != nil {
		return rep, fmt.Errorf("memstore: state dir: %w", err)
	}
	snapPath := filepath.Join(dir, snapshotName)
	data, err := os.ReadFile(snapPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return rep, fmt.Errorf("memstore: read snapshot %s: %w", snapPath, err)
	default:
		var snap snapshot
		if err := decodeSnapshot(data, &snap); err != nil {
			rep.Damaged = append(rep.Damaged, Damage{File: snapPath, Err: err})
			if repair {
				q := snapPath + quarantineSuffix
				if err := os.Rename(snapPath, q); err != nil {
					return rep, fmt.Errorf("memstore: move damaged snapshot aside: %w", err)
				}
				rep.Quarantine = append(rep.Quarantine, q)
			}
		}
	}
	gens, err := journals(dir)
	if err != nil {
		return rep, err
	}
	for _, gen := range gens {
		if err := scanFile(&rep, journalPath(dir, gen), repair); err != nil {
			return rep, err
		}
	}
	if repair && len(rep.Quarantine) > 0 {
		if err := syncDir(dir); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// scanFile checks one journal and, with repair, splits it into its good
// lines (the journal, replaced atomically) and its damaged ones (appended
// to the quarantine file).
func scanFile(rep *Report, path string, repair bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("memstore: read journal %s: %w", path, err)
	}
	rep.Journals++
	var good, bad bytes.Buffer
	scanJournal(data, func(l journalLine) bool {
		if l.err == nil {
			rep.Records++
			good.Write(l.text)
			good.WriteByte('\n')
			return true
		}
		op := l.rec.Op
		if op == "" && bytes.Contains(l.text, []byte(`"op":"`+opBan+`"`)) {
			op = opBan
		}
		rep.Damaged = append(rep.Damaged, Damage{File: path, Line: l.no, Err: l.err, Torn: l.torn(), Op: op})
		fmt.Fprintf(&bad, "# %s line %d: %s\n", filepath.Base(path), l.no, strings.ReplaceAll(l.err.Error(), "\n", " "))
		bad.Write(l.text)
		bad.WriteByte('\n')
		return true
	})
	if !repair || bad.Len() == 0 {
		return nil
	}
	q := path + quarantineSuffix
	f, err := os.OpenFile(q, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("memstore: quarantine: %w", err)
	}
	_, err = f.Write(bad.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("memstore: quarantine %s: %w", q, err)
	}
	rep.Quarantine = append(rep.Quarantine, q)
	return writeFileSync(path, good.Bytes())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("memstore: sync state dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("memstore: sync state dir %s: %w", dir, err)
	}
	return nil
}
