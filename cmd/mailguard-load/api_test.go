package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/api"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/store/memstore"
)

// -api drives the real API's /v1/check over keep-alive connections: one
// client address of four is banned, so a quarter of the answers are 403.
func TestAPIRun(t *testing.T) {
	st, err := memstore.Open(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	g, err := guard.New(st, guard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Ban(context.Background(), testAddrs(4)[0], "", time.Hour); err != nil {
		t.Fatal(err)
	}
	toks, err := api.ParseTokens(strings.NewReader("load-test-token-0123456789 check\n"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &api.Server{Guard: g, Tokens: toks}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() { srv.Close(); <-done }()

	var out, errOut bytes.Buffer
	args := []string{"-api", "http://" + l.Addr().String() + "/", "-api-header", "Authorization: Bearer load-test-token-0123456789",
		"-conns", "4", "-requests", "400", "-clients", "4"}
	if code := run(context.Background(), args, &out, &errOut); code != 0 {
		t.Fatalf("run = %d, stderr: %s", code, errOut.String())
	}
	for _, want := range []string{"400 answered", "0 errors", "req/s", "p99", "api GET /v1/check", "answers     204 300, 403 100",
		"4 client addresses; "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	checkConnsOpened(t, out.String(), 4)
	// A wrong token is an error, not an answer.
	out.Reset()
	args[3] = "Authorization: Bearer wrong-token-0123456789"
	if code := run(context.Background(), args, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "401") {
		t.Errorf("run with a wrong token = %d, stderr: %s", code, errOut.String())
	}
}

func TestAPIFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-api", "http://192.0.2.1:10031/"},
		{"-api", "https://127.0.0.1:10031/"},
		{"-api", "http://127.0.0.1:10031/v1/check"},
		{"-api", "http://127.0.0.1:10031/", "-dovecot", "http://127.0.0.1:10029/"},
		{"-api", "http://127.0.0.1:10031/", "-fail-ratio", "0.1"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("run(%q) = %d, want 2; stderr: %s", args, code, errOut.String())
		}
	}
}
