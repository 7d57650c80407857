package authhook

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/listen"
)

// serve runs s on l and returns a func that closes s and checks that Serve
// returned nil.
func serve(t *testing.T, s *Server, l net.Listener) func() {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	return func() {
		t.Helper()
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Serve did not return after Close")
		}
	}
}

// TestServeTCP talks to a real listener the way Dovecot does: several
// requests on one kept-alive connection, with the API header.
func TestServeTCP(t *testing.T) {
	l, err := listen.Listen("127.0.0.1:0", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	log, _ := testLogger(t)
	s := &Server{Guard: newFakeGuard("127.0.0.3"), APIHeader: "Authorization: Bearer KEY", Log: log}
	stop := serve(t, s, l)
	defer stop()

	var conns atomic.Int32
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if !i.Reused {
			conns.Add(1)
		}
	}}
	url := "http://" + l.Addr().String()
	for i, tc := range []struct{ remote, want string }{
		{"127.0.0.2", `{"status":0,"msg":""}`},
		{"127.0.0.3", `{"status":-1,"msg":"` + DefaultRejectMsg + `"}`},
		{"127.0.0.2", `{"status":0,"msg":""}`},
	} {
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
			http.MethodPost, url+"/?command=allow", strings.NewReader(reqBody(tc.remote, "alice", fmt.Sprint(i))))
		req.Header.Set("Authorization", "Bearer KEY")
		req.Header.Set("User-Agent", "dovecot/auth-policy-client")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != tc.want {
			t.Errorf("request %d: %d %s, want 200 %s", i, resp.StatusCode, body, tc.want)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 3 requests, want 1 (keep-alive)", n)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestServeUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.sock")
	// A stale socket file from a previous run is replaced.
	old, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	old.(*net.UnixListener).SetUnlinkOnClose(false)
	old.Close()

	log, _ := testLogger(t)
	s := &Server{Guard: newFakeGuard(), Log: log}
	l, err := listen.Listen("unix:"+path, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()

	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	resp, err := client.Post("http://policy/?command=report", "application/json", strings.NewReader(reqBody("192.0.2.1", "a", "s")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("status %d", resp.StatusCode)
	}
	client.CloseIdleConnections()
	s.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
}

func TestCloseBeforeServe(t *testing.T) {
	s := &Server{Guard: newFakeGuard()}
	s.Close()
	l, err := listen.Listen("127.0.0.1:0", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err != nil {
		t.Errorf("Serve after Close = %v, want nil", err)
	}
}

func TestServeNilGuard(t *testing.T) {
	l, err := listen.Listen("127.0.0.1:0", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Server{}).Serve(l); err == nil {
		t.Error("Serve without a Guard succeeded")
	}
}
