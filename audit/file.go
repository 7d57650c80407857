package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Defaults of a File: rotate at 100 MB, keep 5 rotated files.
const (
	DefaultFileMaxSize = 100 << 20
	DefaultFileKeep    = 5
)

// File is an append-only JSON-lines audit file rotated by size: when a
// write would take it past MaxSize, PATH becomes PATH.1, PATH.1 becomes
// PATH.2 and so on, the oldest beyond Keep is removed, and a new PATH is
// started. It is safe for concurrent use.
type File struct {
	path    string
	maxSize int64
	keep    int

	mu   sync.Mutex
	f    *os.File
	size int64
}

// OpenFile opens (creating, mode 0600) the audit file at path. maxSize and
// keep zero mean the defaults.
func OpenFile(path string, maxSize int64, keep int) (*File, error) {
	if maxSize <= 0 {
		maxSize = DefaultFileMaxSize
	}
	if keep <= 0 {
		keep = DefaultFileKeep
	}
	af := &File{path: path, maxSize: maxSize, keep: keep}
	if err := af.open(); err != nil {
		return nil, err
	}
	return af, nil
}

func (af *File) open() error {
	f, err := os.OpenFile(af.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit: open file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: open file: %w", err)
	}
	af.f, af.size = f, fi.Size()
	return nil
}

// Write appends lines (each one record ending in a newline), rotating
// first when they would not fit.
func (af *File) Write(lines []byte) error {
	af.mu.Lock()
	defer af.mu.Unlock()
	if af.f == nil {
		return errors.New("audit: file closed")
	}
	if af.size > 0 && af.size+int64(len(lines)) > af.maxSize {
		if err := af.rotate(); err != nil {
			return err
		}
	}
	n, err := af.f.Write(lines)
	af.size += int64(n)
	if err != nil {
		return fmt.Errorf("audit: write file: %w", err)
	}
	return nil
}

func (af *File) rotate() error {
	if err := af.f.Close(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	af.f = nil
	os.Remove(fmt.Sprintf("%s.%d", af.path, af.keep))
	for i := af.keep - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", af.path, i), fmt.Sprintf("%s.%d", af.path, i+1))
	}
	if err := os.Rename(af.path, af.path+".1"); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	return af.open()
}

// Close closes the file.
func (af *File) Close() error {
	af.mu.Lock()
	defer af.mu.Unlock()
	if af.f == nil {
		return nil
	}
	err := af.f.Close()
	af.f = nil
	return err
}

// MaxLine bounds one record when reading.
const MaxLine = 64 << 10

// Read calls fn for each record of r, in order. A line that is not a record
// stops it with an error naming the line; fn's error stops it too.
func Read(r io.Reader, fn func(Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		e, err := Unmarshal(line)
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("audit: read: %w", err)
	}
	return nil
}

// ReadFiles reads the audit file at path and its rotated predecessors,
// oldest first (PATH.N ... PATH.1, PATH), calling fn for each record.
func ReadFiles(path string, fn func(Event) error) error {
	var paths []string
	for i := 1; ; i++ {
		p := fmt.Sprintf("%s.%d", path, i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		paths = append([]string{p}, paths...)
	}
	paths = append(paths, path)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		err = Read(f, fn)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

// ParseSize reads a size: a whole number of bytes, or with a suffix KB,
// MB or GB (powers of 1024), e.g. "100MB".
func ParseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if x, ok := strings.CutSuffix(t, u.suf); ok {
			t, mult = strings.TrimSpace(x), u.m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, KB, MB or GB", s)
	}
	return n * mult, nil
}
