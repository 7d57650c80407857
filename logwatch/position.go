package logwatch

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// headBytes is how much of a file's beginning identifies it: a file whose
// first bytes changed was replaced or truncated and rewritten, whatever its
// inode says (inodes are reused).
const headBytes = 256

// position is what is remembered per followed file in the state directory.
type position struct {
	Path    string    `json:"path"`
	Dev     uint64    `json:"dev"`
	Ino     uint64    `json:"ino"`
	Offset  int64     `json:"offset"`
	HeadLen int       `json:"head_len"`
	Head    string    `json:"head_sha256"`
	SavedAt time.Time `json:"saved_at"`
}

// fileID is a file's device and inode.
type fileID struct{ dev, ino uint64 }

func idOf(fi fs.FileInfo) fileID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino} //nolint:unconvert // Dev is uint32 on some platforms
}

// headHash hashes the first n bytes of f (read with ReadAt, so the read
// offset does not move). ok is false when f is shorter than n.
func headHash(f io.ReaderAt, n int) (sum string, ok bool, err error) {
	buf := make([]byte, n)
	got, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", false, err
	}
	if got < n {
		return "", false, nil
	}
	return hashBytes(buf), true, nil
}

func hashBytes(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// sameHead reports whether f starts with the bytes p remembers.
func sameHead(f io.ReaderAt, p position) bool {
	if p.HeadLen == 0 {
		return true // nothing was read from it yet: nothing to compare
	}
	sum, ok, err := headHash(f, p.HeadLen)
	return err == nil && ok && sum == p.Head
}

// stateFile is the position file for path inside dir: the base name for
// people, a hash of the full path so two logs with one base name differ.
func stateFile(dir, path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	h := sha256.Sum256([]byte(abs))
	return filepath.Join(dir, "logwatch-"+filepath.Base(abs)+"-"+hex.EncodeToString(h[:6])+".json")
}

// loadPosition reads the position of path; ok is false when none is stored.
// A damaged file is an error (the caller starts at the end and says so).
func loadPosition(dir, path string) (p position, ok bool, err error) {
	b, err := os.ReadFile(stateFile(dir, path))
	if errors.Is(err, fs.ErrNotExist) {
		return position{}, false, nil
	}
	if err != nil {
		return position{}, false, fmt.Errorf("logwatch: read position: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return position{}, false, fmt.Errorf("logwatch: position file %s: %w", stateFile(dir, path), err)
	}
	if p.Offset < 0 || p.HeadLen < 0 || p.HeadLen > headBytes {
		return position{}, false, fmt.Errorf("logwatch: position file %s: offset %d, head %d out of range", stateFile(dir, path), p.Offset, p.HeadLen)
	}
	return p, true, nil
}

// savePosition writes p atomically.
func savePosition(dir string, p position) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("logwatch: encode position: %w", err)
	}
	return writeAtomic(dir, stateFile(dir, p.Path), b)
}

// writeAtomic replaces name (in dir) with b: a temporary file in dir, fsync,
// rename, so a crash leaves the old content or the new, never half.
func writeAtomic(dir, name string, b []byte) error {
	tmp, err := os.CreateTemp(dir, ".logwatch-*.tmp")
	if err != nil {
		return fmt.Errorf("logwatch: save position: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("logwatch: save position: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("logwatch: save position: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("logwatch: save position: %w", err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("logwatch: save position: %w", err)
	}
	return nil
}
