package listen

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testcert"
)

// Served over TLS, the cap tracks the connections under the *tls.Conn that
// http.Server reports: closed ones leave its table, idle ones are evicted.
func TestHTTPServesTLSCapped(t *testing.T) {
	cert, pool := testcert.New(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := Cap(l, 2)
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
	}
	var h HTTP
	done := make(chan error, 1)
	go func() { done <- h.Serve(srv, cl) }()
	defer func() { h.Close(); <-done }()

	for i := range 5 { // more connections than the cap, one after another
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := c.Get("https://" + l.Addr().String() + "/")
		if err != nil {
			t.Fatalf("request %d over TLS: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
	}
	deadline := time.Now().Add(10 * time.Second)
	for cl.Len() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the server notices the closes on its own goroutines
	}
	if n := cl.Len(); n != 0 {
		t.Errorf("cap holds %d closed TLS connections, want 0", n)
	}
}
