package listen

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// HTTP runs one http.Server on a Capped listener, for the daemon's small
// HTTP servers (admin socket, metrics). Close may come before, during or
// after Serve without a race. The zero value is ready to use.
type HTTP struct {
	mu     sync.Mutex
	srv    *http.Server
	closed bool
}

// Serve serves srv on l until Close, then returns nil; it sets
// srv.ConnState to l's, which the cap needs. With srv.TLSConfig set it
// serves TLS with that configuration's certificates. If Close came first, it
// closes l and returns nil at once.
func (h *HTTP) Serve(srv *http.Server, l *Capped) error {
	srv.ConnState = l.ConnState
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		l.Close()
		return nil
	}
	h.srv = srv
	h.mu.Unlock()
	var err error
	if srv.TLSConfig != nil {
		err = srv.ServeTLS(l, "", "")
	} else {
		err = srv.Serve(l)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Close closes the listener and every connection; Serve returns.
func (h *HTTP) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.srv == nil {
		return nil
	}
	return h.srv.Close()
}

// Limits bound a server of NewServer. The timeouts are http.Server's: zero
// means none (resolve the caller's defaults with OrDefault first).
type Limits struct {
	// MaxConns caps the open connections (Cap; under 1 means 1).
	MaxConns                                                  int
	ReadHeaderTimeout, ReadTimeout, IdleTimeout, WriteTimeout time.Duration
}

// MaxHeaderBytes bounds a request's header on a server of NewServer.
const MaxHeaderBytes = 16 << 10

// NewServer returns an http.Server for h with lim's timeouts, headers of at
// most MaxHeaderBytes and net/http's own lines (broken requests, accept
// errors) logged at debug on log, and l capped at lim.MaxConns for it.
// Set TLSConfig and the Capped's Shed as needed, then serve the pair with
// HTTP.Serve.
func NewServer(l net.Listener, h http.Handler, lim Limits, log *slog.Logger) (*http.Server, *Capped) {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		IdleTimeout:       lim.IdleTimeout,
		WriteTimeout:      lim.WriteTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return srv, Cap(l, lim.MaxConns)
}

// OrDefault returns v, or def when v is zero or negative: how the servers
// resolve their zero-means-default fields. (cmp.Or would keep a negative
// value.)
func OrDefault[T int | int64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}
