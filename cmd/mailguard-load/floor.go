package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Floor mode: `mailguard-load floor` serves both front-end protocols doing
// the least a server can do on the same path, so that `make load` can show
// what mailguard costs on top of it:
//
//   - Postfix policy: one goroutine per connection reads request lines up to
//     the empty line (bounded like policyd: line length, attributes) and
//     answers "action=DUNNO"; no parsing, no policy, no store.
//   - Dovecot auth policy: a net/http server, as authhook's, reads the
//     body (capped) and answers {"status":0}; a GET (the -api load's
//     /v1/check) gets 204, as mailguard's API answers an allowed client.
//
// It listens on loopback only and stops after -duration or on SIGINT.
const (
	floorMaxDuration = time.Hour
	floorMaxLine     = 2048 // policyd's default line limit
	floorMaxAttrs    = 100
	floorMaxBody     = 16 << 10
	floorIdle        = 30 * time.Second
)

var (
	floorPolicyAnswer  = []byte("action=DUNNO\n\n")
	floorDovecotAnswer = []byte(`{"status":0,"msg":""}` + "\n")
)

func runFloor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("mailguard-load floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	policy := fs.String("policy", "127.0.0.1:10028", "serve the Postfix policy protocol here: loopback host:port or unix:/path; empty: not at all")
	dovecot := fs.String("dovecot", "127.0.0.1:10029", "serve Dovecot's auth policy HTTP API here: loopback host:port or unix:/path; empty: not at all")
	duration := fs.Duration("duration", 10*time.Minute, fmt.Sprintf("stop after this long (at most %v)", floorMaxDuration))
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var errs []string
	if fs.NArg() > 0 {
		errs = append(errs, "unexpected arguments: "+strings.Join(fs.Args(), " "))
	}
	if *duration <= 0 || *duration > floorMaxDuration {
		errs = append(errs, fmt.Sprintf("-duration must be more than 0 and at most %v", floorMaxDuration))
	}
	if *policy == "" && *dovecot == "" {
		errs = append(errs, "give -policy, -dovecot or both")
	}
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	listen := func(flagName, addr string) net.Listener {
		if addr == "" {
			return nil
		}
		network, a, err := loopbackTarget(ctx, flagName, addr)
		if err != nil {
			errs = append(errs, err.Error())
			return nil
		}
		l, err := net.Listen(network, a)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", flagName, err))
			return nil
		}
		listeners = append(listeners, l)
		return l
	}
	var pl, dl net.Listener
	if len(errs) == 0 {
		pl = listen("-policy", *policy)
		dl = listen("-dovecot", *dovecot)
	}
	if len(errs) > 0 {
		fmt.Fprintln(stderr, "mailguard-load floor: "+strings.Join(errs, "\nmailguard-load floor: "))
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()
	f := &floor{}
	if pl != nil {
		fmt.Fprintf(stdout, "floor: postfix policy on %s\n", pl.Addr())
	}
	if dl != nil {
		fmt.Fprintf(stdout, "floor: dovecot auth policy on http://%s/\n", dl.Addr())
	}
	if err := f.serve(ctx, pl, dl); err != nil {
		fmt.Fprintln(stderr, "mailguard-load floor:", err)
		return 1
	}
	return 0
}

// floor serves until ctx ends, then closes the listeners and every
// connection and returns once all its goroutines are done.
type floor struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (f *floor) serve(ctx context.Context, policy, dovecot net.Listener) error {
	f.conns = map[net.Conn]struct{}{}
	errc := make(chan error, 2)
	var srv *http.Server
	if policy != nil {
		f.wg.Go(func() { errc <- f.servePolicy(policy) })
	}
	if dovecot != nil {
		srv = &http.Server{
			Handler:           http.HandlerFunc(floorDovecot),
			ReadHeaderTimeout: floorIdle,
			IdleTimeout:       floorIdle,
			MaxHeaderBytes:    floorMaxBody,
		}
		f.wg.Go(func() {
			if err := srv.Serve(dovecot); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		})
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	if policy != nil {
		policy.Close()
	}
	if srv != nil {
		srv.Close()
	}
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	return err
}

func (f *floor) servePolicy(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		f.mu.Lock()
		f.conns[c] = struct{}{}
		f.mu.Unlock()
		f.wg.Go(func() {
			defer func() {
				f.mu.Lock()
				delete(f.conns, c)
				f.mu.Unlock()
				c.Close()
			}()
			floorPolicyConn(c)
		})
	}
}

// floorPolicyConn answers every request on c with DUNNO until c closes or
// sends something that is not a policy request.
func floorPolicyConn(c net.Conn) {
	br := bufio.NewReaderSize(c, 4096)
	attrs := 0
	for {
		c.SetReadDeadline(time.Now().Add(floorIdle))
		line, err := br.ReadSlice('\n')
		if err != nil || len(line) > floorMaxLine {
			return // EOF, idle, or a line too long
		}
		if len(line) > 1 && !(len(line) == 2 && line[0] == '\r') {
			if attrs++; attrs > floorMaxAttrs {
				return
			}
			continue
		}
		attrs = 0
		if _, err := c.Write(floorPolicyAnswer); err != nil {
			return
		}
	}
}

func floorDovecot(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		// The floor of -api: GET /v1/check answered as allowed, nothing read.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, floorMaxBody)); err != nil {
		http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(floorDovecotAnswer)
}
