package replay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"

	"github.com/mailguard/mailguard/audit"
)

// Decoding JSON is half the cost of a replay, and it needs no order: Read
// decodes chunks of lines on every core and replays them in order on one.
const chunkLines = 1024

// chunk is chunkLines consecutive lines: read by one goroutine, decoded
// by a worker, replayed in order by Read.
type chunk struct {
	first int      // number of the first line
	buf   []byte   // the lines' bytes
	ends  []int    // end of each line in buf; -1: a line too long
	out   []parsed // the decoded lines
	done  chan struct{}
}

type parsed struct {
	e     audit.Event
	err   error
	blank bool
}

// Read replays every record of r, one JSON object a line. A bad line
// (not JSON, truncated, an invalid address, too long) is reported in
// Result.Bad with its line number and skipped; past Options.MaxBadLines
// Read stops with ErrTooManyBadLines.
func (rp *Replay) Read(parent context.Context, r io.Reader) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	workers := max(1, runtime.GOMAXPROCS(0))
	work := make(chan *chunk, 2*workers)
	order := make(chan *chunk, 2*workers)
	var wg sync.WaitGroup
	var readErr error
	wg.Add(1)
	go func() { // the reader: owns work and order, closes both
		defer wg.Done()
		defer close(order)
		defer close(work)
		readErr = split(ctx, r, rp.line+1, work, order)
	}()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				decode(c)
			}
		}()
	}
	err := rp.replayChunks(ctx, order)
	cancel()
	for c := range order { // let the reader finish
		<-c.done
	}
	wg.Wait()
	if err != nil {
		return err
	}
	if readErr != nil && !errors.Is(readErr, context.Canceled) {
		return fmt.Errorf("replay: read: %w", readErr)
	}
	return parent.Err()
}

// ReadFiles replays the audit file at path and its rotated predecessors,
// oldest first (PATH.N ... PATH.1, PATH), as audit.ReadFiles finds them;
// bad lines name their file.
func (rp *Replay) ReadFiles(ctx context.Context, path string) error {
	var paths []string
	for i := 1; ; i++ {
		p := fmt.Sprintf("%s.%d", path, i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		paths = append([]string{p}, paths...)
	}
	for _, p := range append(paths, path) {
		f, err := os.Open(p)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		rp.file, rp.line = p, 0
		err = rp.Read(ctx, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("replay: %s: %w", p, err)
		}
	}
	rp.file = ""
	return nil
}

func (rp *Replay) replayChunks(ctx context.Context, order <-chan *chunk) error {
	for c := range order {
		<-c.done
		for i, p := range c.out {
			rp.line = c.first + i
			rp.res.Lines++
			if p.blank {
				continue
			}
			err := p.err
			if err == nil {
				err = rp.Event(ctx, p.e)
			}
			if err != nil {
				rp.res.Bad = append(rp.res.Bad, LineError{File: rp.file, Line: rp.line, Err: err.Error()})
				if len(rp.res.Bad) > rp.o.MaxBadLines {
					return fmt.Errorf("%w (%d, the last at line %d)", ErrTooManyBadLines, len(rp.res.Bad), rp.line)
				}
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// split cuts r into chunks, numbering lines from first, and hands each to
// the workers and, in order, to Read.
func split(ctx context.Context, r io.Reader, first int, work, order chan<- *chunk) error {
	br := bufio.NewReaderSize(r, 256<<10)
	c := &chunk{first: first, done: make(chan struct{})}
	send := func() bool {
		select {
		case order <- c:
		case <-ctx.Done():
			return false
		}
		work <- c // a worker takes it: they stop only when work is closed
		c = &chunk{first: c.first + len(c.ends), done: make(chan struct{})}
		return true
	}
	for {
		line, err := readLine(br)
		if err != nil && err != io.EOF && err != errLong {
			return err
		}
		if len(line) > 0 || err == nil || err == errLong {
			if err == errLong {
				c.ends = append(c.ends, -1)
			} else {
				c.buf = append(c.buf, line...)
				c.ends = append(c.ends, len(c.buf))
			}
			if len(c.ends) == chunkLines && !send() {
				return ctx.Err()
			}
		}
		if err == io.EOF {
			if len(c.ends) > 0 && !send() {
				return ctx.Err()
			}
			return nil
		}
	}
}

func decode(c *chunk) {
	defer close(c.done)
	c.out = make([]parsed, len(c.ends))
	start := 0
	for i, end := range c.ends {
		if end < 0 {
			c.out[i].err = fmt.Errorf("longer than %d bytes", audit.MaxLine)
			continue
		}
		line := c.buf[start:end]
		start = end
		if len(bytes.TrimSpace(line)) == 0 {
			c.out[i].blank = true
			continue
		}
		e, err := audit.Unmarshal(line)
		switch {
		case err != nil:
			// "audit: decode:" says nothing here; keep the rest.
			c.out[i].err = errors.New(strings.TrimPrefix(err.Error(), "audit: decode: "))
		case e.Time.IsZero():
			c.out[i].err = fmt.Errorf("record %s without a time", e.ID)
		default:
			c.out[i].e = e
		}
	}
}

var errLong = errors.New("line too long")

// readLine returns the next line without its newline; a line past
// audit.MaxLine is skipped to its end and reported as errLong.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || (err == nil && len(line) > audit.MaxLine+1) {
		for err == bufio.ErrBufferFull {
			_, err = br.ReadSlice('\n')
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
		return nil, errLong
	}
	return bytes.TrimSuffix(line, []byte("\n")), err
}
