package audit

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailguard/mailguard/store"
)

// Defaults of a Recorder.
const (
	DefaultQueue = 8192 // events waiting to be written
	DefaultKeep  = 10   // events per subject when Options.Keep is zero
	DefaultTTL   = 7 * 24 * time.Hour
	maxBatch     = 512             // events per store round trip and file write
	writeTimeout = 5 * time.Second // one store Append
)

// Options configure a Recorder. Zero values are documented per field.
type Options struct {
	Node  string
	Users UserMode // zero: DefaultUserMode
	// Store keeps the trail (nil: no trail in the store). File is the
	// JSON-lines file (nil: none); the Recorder closes it.
	Store store.Auditing
	File  *File
	// Keep is how many events a subject's trail keeps (zero: DefaultKeep),
	// TTL how long after its latest event (zero: DefaultTTL).
	Keep int
	TTL  time.Duration
	// Queue bounds the events waiting to be written (zero: DefaultQueue);
	// past it events are dropped and counted, never waited for.
	Queue int
	Log   *slog.Logger     // nil: slog.Default()
	Now   func() time.Time // nil: time.Now
}

// Recorder names decisions and writes them in the background, in batches:
// Record never waits for the store or the disk. It is safe for concurrent
// use; Close flushes what is queued.
type Recorder struct {
	o       Options
	ch      chan Event
	flush   chan chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
	dropped atomic.Int64
	failed  atomic.Int64
	logged  atomic.Int64 // unix seconds of the last error line
}

// NewRecorder returns a running Recorder; call Close to stop it.
func NewRecorder(o Options) *Recorder {
	if !o.Users.Valid() {
		o.Users = DefaultUserMode
	}
	if o.Keep <= 0 {
		o.Keep = DefaultKeep
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Queue <= 0 {
		o.Queue = DefaultQueue
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Recorder{o: o, ch: make(chan Event, o.Queue), flush: make(chan chan struct{}), done: make(chan struct{})}
	r.wg.Add(1)
	go r.run()
	return r
}

// Users is how events name users.
func (r *Recorder) Users() UserMode { return r.o.Users }

// Record names e (ID, time, node, the user, in User and Subject, as Users
// says) and queues it; it
// returns the id. Subjects and every other field are the caller's.
func (r *Recorder) Record(e Event) string {
	e.V = Version
	e.ID = NewID()
	if e.Time.IsZero() {
		e.Time = r.o.Now()
	}
	e.Time = e.Time.UTC()
	e.Node = r.o.Node
	e.User = r.o.Users.User(e.User)
	e.Subject = r.o.Users.Subject(e.Subject)
	select {
	case r.ch <- e:
	default:
		r.dropped.Add(1)
		r.warn("audit queue full, event dropped", "dropped", r.dropped.Load())
	}
	return e.ID
}

// Dropped counts events lost to a full queue, Failed those a store or
// file write lost.
func (r *Recorder) Dropped() int64 { return r.dropped.Load() }
func (r *Recorder) Failed() int64  { return r.failed.Load() }

// Flush waits until every event queued before it is written, or ctx ends.
func (r *Recorder) Flush(ctx context.Context) error {
	c := make(chan struct{})
	select {
	case r.flush <- c:
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close writes what is queued, stops the Recorder and closes the file.
func (r *Recorder) Close() error {
	r.once.Do(func() { close(r.done) })
	r.wg.Wait()
	if r.o.File != nil {
		return r.o.File.Close()
	}
	return nil
}

func (r *Recorder) run() {
	defer r.wg.Done()
	batch := make([]Event, 0, maxBatch)
	for {
		select {
		case e := <-r.ch:
			batch = append(batch[:0], e)
			batch = r.drain(batch)
			r.write(batch)
		case c := <-r.flush:
			for len(r.ch) > 0 {
				r.write(r.drain(batch[:0]))
			}
			close(c)
		case <-r.done:
			for len(r.ch) > 0 {
				r.write(r.drain(batch[:0]))
			}
			return
		}
	}
}

// drain appends what is queued, up to maxBatch events.
func (r *Recorder) drain(batch []Event) []Event {
	for len(batch) < maxBatch {
		select {
		case e := <-r.ch:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

func (r *Recorder) write(batch []Event) {
	if len(batch) == 0 {
		return
	}
	recs := make([]store.AuditRecord, 0, len(batch))
	var lines []byte
	for _, e := range batch {
		b, err := Marshal(e)
		if err != nil {
			r.failed.Add(1)
			continue
		}
		recs = append(recs, store.AuditRecord{ID: e.ID, Subjects: e.Subjects, Data: b, Keep: r.o.Keep, TTL: r.o.TTL})
		if r.o.File != nil {
			lines = append(append(lines, b...), '\n')
		}
	}
	if r.o.Store != nil {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		err := r.o.Store.Append(ctx, recs)
		cancel()
		if err != nil {
			r.failed.Add(int64(len(recs)))
			r.warn("audit trail not stored", "events", len(recs), "err", err)
		}
	}
	if r.o.File != nil {
		if err := r.o.File.Write(lines); err != nil {
			r.failed.Add(int64(len(recs)))
			r.warn("audit file not written", "events", len(recs), "err", err)
		}
	}
}

// warn logs at most one line a minute.
func (r *Recorder) warn(msg string, args ...any) {
	now := time.Now().Unix()
	last := r.logged.Load()
	if now-last < 60 || !r.logged.CompareAndSwap(last, now) {
		return
	}
	r.o.Log.Warn(msg, args...)
}
