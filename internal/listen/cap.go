package listen

import (
	"net"
	"net/http"
	"sync"
)

// Capped is a listener for an http.Server that never holds more than Max
// connections, so that a flood of idle connections cannot use up the
// process's file descriptors (and with them every other listener). Set the
// server's ConnState to the Capped's ConnState method.
//
// When a connection arrives with Max already open, the connection idle the
// longest (accepted and silent, or kept alive between requests) is closed to
// make room: a well-behaved client reconnects, an idler loses its slot. When
// every connection is in the middle of a request (which the server's
// ReadHeaderTimeout and WriteTimeout bound), the new one is closed at once.
type Capped struct {
	net.Listener
	max int
	// Shed, when not nil, is called for each connection closed for room:
	// reason "idle" (an idle one evicted) or "busy" (the new one refused).
	Shed func(reason string)

	mu    sync.Mutex
	seq   uint64
	conns map[net.Conn]*slot
}

type slot struct {
	busy bool
	// idleSince orders idle connections: the smallest has been idle longest.
	idleSince uint64
}

// Cap wraps l to hold at most n connections (n < 1 means 1).
func Cap(l net.Listener, n int) *Capped {
	return &Capped{Listener: l, max: max(n, 1), conns: map[net.Conn]*slot{}}
}

// Accept returns the next connection, making room for it as described on
// Capped.
func (l *Capped) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		victim, ok := l.admit(c)
		if victim != nil {
			victim.Close()
			l.shed("idle")
		}
		if ok {
			return c, nil
		}
		c.Close()
		l.shed("busy")
	}
}

func (l *Capped) admit(c net.Conn) (victim net.Conn, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) >= l.max {
		var oldest *slot
		for vc, s := range l.conns {
			if !s.busy && (oldest == nil || s.idleSince < oldest.idleSince) {
				victim, oldest = vc, s
			}
		}
		if victim == nil {
			return nil, false
		}
		delete(l.conns, victim)
	}
	l.seq++
	l.conns[c] = &slot{idleSince: l.seq}
	return victim, true
}

// ConnState tracks the connections; give it to http.Server.ConnState.
func (l *Capped) ConnState(c net.Conn, st http.ConnState) {
	if u, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = u.NetConn() // a *tls.Conn: the cap tracks the connection under it
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.conns[c]
	switch st {
	case http.StateActive:
		if ok {
			s.busy = true
		}
	case http.StateIdle:
		if ok {
			l.seq++
			s.busy, s.idleSince = false, l.seq
		}
	case http.StateClosed, http.StateHijacked:
		delete(l.conns, c)
	}
}

// Len returns the connections open now.
func (l *Capped) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (l *Capped) shed(reason string) {
	if l.Shed != nil {
		l.Shed(reason)
	}
}
