package listen

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// capServer serves handler on a Capped loopback listener of n connections.
// idle, when not nil, receives a value each time a connection turns idle
// after a request (so that a test knows the server's view).
func capServer(t *testing.T, n int, handler http.HandlerFunc, idle chan<- struct{}) (*Capped, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := Cap(l, n)
	state := func(c net.Conn, st http.ConnState) {
		cl.ConnState(c, st)
		if st == http.StateIdle && idle != nil {
			idle <- struct{}{}
		}
	}
	srv := &http.Server{Handler: handler, ConnState: state, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { srv.Serve(cl); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return cl, l.Addr().String()
}

// get sends one keep-alive GET on c and reads the answer's status line.
func get(t *testing.T, c net.Conn, rd *bufio.Reader) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(rd, nil)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.Status
}

// closedByServer reports whether the server closed c (EOF or reset).
func closedByServer(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// Twice the cap in idle connections (silent ones and kept-alive ones):
// every new connection is still served, the oldest idle ones are closed,
// and the server never holds more than the cap.
func TestCappedEvictsLongestIdle(t *testing.T) {
	const n = 4
	var mu sync.Mutex
	reasons := map[string]int{}
	idle := make(chan struct{}, 64)
	cl, addr := capServer(t, n, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }, idle)
	cl.Shed = func(r string) { mu.Lock(); reasons[r]++; mu.Unlock() }

	var idlers []net.Conn
	for i := range 2 * n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i%2 == 1 { // kept alive after one request
			if got := get(t, c, bufio.NewReader(c)); got != "200 OK" {
				t.Fatalf("idler %d: %s", i, got)
			}
			<-idle // the server too sees it idle now
		}
		idlers = append(idlers, c)
	}
	// A real client still gets its answers.
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := get(t, c, bufio.NewReader(c)); got != "200 OK" {
			t.Fatalf("client after the flood: %s", got)
		}
		c.Close()
	}
	// The first client made room by closing the oldest idler, and closed
	// its own connection: the next ones found a free slot.
	closed := n + 1
	for i, c := range idlers[:closed] {
		if !closedByServer(c) {
			t.Errorf("idler %d (of the %d oldest) still open", i, closed)
		}
	}
	if got := cl.Len(); got > n {
		t.Errorf("server holds %d connections, cap %d", got, n)
	}
	mu.Lock()
	defer mu.Unlock()
	if reasons["idle"] < closed {
		t.Errorf("Shed(idle) called %d times, want at least %d", reasons["idle"], closed)
	}
}

// With every slot in the middle of a request, a new connection is closed
// at once instead of waiting.
func TestCappedRefusesWhenAllBusy(t *testing.T) {
	const n = 2
	release := make(chan struct{})
	inside := make(chan struct{}, n)
	_, addr := capServer(t, n, func(w http.ResponseWriter, r *http.Request) {
		inside <- struct{}{}
		<-release
		io.WriteString(w, "ok")
	}, nil)
	var wg sync.WaitGroup
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		<-inside
		wg.Go(func() {
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Errorf("busy request: %v", err)
			}
		})
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !closedByServer(c) {
		t.Errorf("a connection over the cap with every slot busy was kept")
	}
	close(release)
	wg.Wait()
	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := get(t, c2, bufio.NewReader(c2)); !strings.HasPrefix(got, "200") {
		t.Errorf("after the busy ones finished: %s", got)
	}
}

func TestOrDefault(t *testing.T) {
	for _, c := range []struct{ v, want time.Duration }{{0, 5}, {-1, 5}, {1, 1}, {7, 7}} {
		if got := OrDefault(c.v, 5); got != c.want {
			t.Errorf("OrDefault(%d, 5) = %d, want %d", c.v, got, c.want)
		}
	}
}

// NewServer's server carries the limits, and its listener the cap.
func TestNewServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim := Limits{MaxConns: 1, ReadHeaderTimeout: time.Second, ReadTimeout: 2 * time.Second, IdleTimeout: 3 * time.Second, WriteTimeout: 4 * time.Second}
	srv, cl := NewServer(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), lim, slog.New(slog.DiscardHandler))
	got := Limits{cl.max, srv.ReadHeaderTimeout, srv.ReadTimeout, srv.IdleTimeout, srv.WriteTimeout}
	if got != lim || srv.MaxHeaderBytes != MaxHeaderBytes || srv.ErrorLog == nil {
		t.Errorf("NewServer = %+v, MaxHeaderBytes %d, ErrorLog %v; want %+v, %d, a logger", got, srv.MaxHeaderBytes, srv.ErrorLog, lim, MaxHeaderBytes)
	}
	var h HTTP
	done := make(chan error, 1)
	go func() { done <- h.Serve(srv, cl) }()
	defer func() { h.Close(); <-done }()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + l.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Errorf("GET = %q, want ok", b)
	}
}
