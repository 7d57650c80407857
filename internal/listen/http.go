package listen

import (
	"errors"
	"net/http"
	"sync"
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
