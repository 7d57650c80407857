package authhook

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/internal/listen"
)

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestSessionsMemoryBounded: before-auth allows that are never reported
// cost a fixed size each, whatever the login's length (15 KB logins held
// 16 KB each before). README quotes the figure.
func TestSessionsMemoryBounded(t *testing.T) {
	const n = 1000
	s := &Server{Guard: benchGuard{}, Log: discardLogger()}
	login := strings.Repeat("x", 15_000)
	before := heapInUse()
	for i := range n {
		post(s, "allow", reqBody("192.0.2.1", fmt.Sprint(login, i), fmt.Sprint(i)))
	}
	grown := int64(heapInUse()) - int64(before)
	if s.sess.len() != n {
		t.Fatalf("%d sessions, want %d", s.sess.len(), n)
	}
	perSession := grown / n
	t.Logf("%d sessions with 15 KB logins: heap +%d KB, %d bytes each", n, grown>>10, perSession)
	if perSession > 512 {
		t.Errorf("a pending session with a 15 KB login costs %d bytes, want a fixed size (< 512)", perSession)
	}
}

// TestSessionsExpireOnTimer: a before-auth allow never followed by anything
// is forgotten after SessionTTL by Serve's janitor, with no further request.
func TestSessionsExpireOnTimer(t *testing.T) {
	clk := fakeclock.New(time.Unix(1_700_000_000, 0))
	s := &Server{Guard: benchGuard{}, Log: discardLogger(), now: clk.Now, sweepEvery: time.Millisecond}
	l, err := listen.Listen("127.0.0.1:0", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	stop := serve(t, s, l)
	defer stop()
	for i := range 100 {
		post(s, "allow", reqBody("192.0.2.1", "alice", fmt.Sprint(i)))
	}
	if n := s.sess.len(); n != 100 {
		t.Fatalf("%d sessions, want 100", n)
	}
	clk.Add(DefaultSessionTTL - time.Second)
	post(s, "allow", reqBody("192.0.2.1", "alice", "late")) // not expired yet: kept
	clk.Add(time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for s.sess.len() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions after SessionTTL, want 1 (the late one)", s.sess.len())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSessionsFull fills every session slot of a default Server. README
// quotes the figure.
func TestSessionsFull(t *testing.T) {
	s := &Server{Guard: benchGuard{}, Log: discardLogger()}
	s.init()
	before := heapInUse()
	for i := range DefaultMaxSessions + 1000 {
		s.sess.allow(attempt{id: fmt.Sprint("s:", i), login: "user@example.org", pwhash: "0abc"}, time.Now())
	}
	grown := int64(heapInUse()) - int64(before)
	if n := s.sess.len(); n != DefaultMaxSessions {
		t.Errorf("%d sessions, want DefaultMaxSessions %d", n, DefaultMaxSessions)
	}
	t.Logf("%d sessions: heap +%d KB", DefaultMaxSessions, grown>>10)
	if grown > 32<<20 {
		t.Errorf("DefaultMaxSessions sessions take %d MB, want under 32 MB", grown>>20)
	}
}

// TestConnectionsMemoryBounded: MaxConns connections, each with the largest
// request it may send half sent (headers up to the limit, a body of almost
// MaxBody), cost a bounded amount each. README quotes the figure.
func TestConnectionsMemoryBounded(t *testing.T) {
	const conns = 200
	s := &Server{Guard: benchGuard{}, Log: discardLogger(), MaxConns: conns}
	l, err := listen.Listen("127.0.0.1:0", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	stop := serve(t, s, l)
	defer stop()
	before := heapInUse()
	hdr := "X-Pad: " + strings.Repeat("h", maxHeaderBytes-1024) + "\r\n"
	body := `{"remote":"192.0.2.1","login":"` + strings.Repeat("x", DefaultMaxBody-100)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		fmt.Fprintf(c, "POST /?command=allow HTTP/1.1\r\nHost: p\r\n%sContent-Length: %d\r\n\r\n%s", hdr, DefaultMaxBody, body)
	}
	// Wait until every handler holds its body: all connections active.
	deadline := time.Now().Add(10 * time.Second)
	for s.conns.activeLen() != conns {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d connections reading their body", s.conns.activeLen(), conns)
		}
		time.Sleep(10 * time.Millisecond)
	}
	grown := int64(heapInUse()) - int64(before)
	t.Logf("%d connections with %d KB half-sent requests: heap +%d KB, %d KB each", conns, (len(hdr)+len(body))>>10, grown>>10, grown/conns>>10)
	if per := grown / conns; per > 128<<10 {
		t.Errorf("a connection costs %d KB, want under 128 KB", per>>10)
	}
}
