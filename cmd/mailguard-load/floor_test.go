package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestFloor drives the floor server with the load tool itself: every Postfix
// request gets DUNNO, every Dovecot request {"status":0}, and the server
// returns once its context ends, with its connections closed.
func TestFloor(t *testing.T) {
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&floor{}).serve(ctx, pl, dl) }()

	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"postfix", []string{"-policy", pl.Addr().String(), "-conns", "4", "-requests", "1000", "-users", "3"},
			[]string{"1000 answered", "0 errors", "answers     DUNNO 1000"}},
		{"dovecot", []string{"-dovecot", "http://" + dl.Addr().String() + "/", "-conns", "4", "-requests", "1000", "-fail-ratio", "0.5"},
			[]string{"1000 answered", "0 errors", "answers     allow ", ", report ", " connections opened"}},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), c.args, &out, &errOut); code != 0 {
			t.Fatalf("%s: run = %d, stderr: %s", c.name, code, errOut.String())
		}
		for _, w := range c.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s: output lacks %q:\n%s", c.name, w, out.String())
			}
		}
		if c.name == "dovecot" {
			checkConnsOpened(t, out.String(), 4)
		}
	}

	// An idle connection is closed when the floor stops.
	idle, err := net.Dial("tcp", pl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := idle.Write([]byte("request=smtpd_access_policy\n\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := idle.Read(buf)
	if err != nil || string(buf[:n]) != "action=DUNNO\n\n" {
		t.Fatalf("floor answered %q, %v; want action=DUNNO and an empty line", buf[:n], err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after its context ended")
	}
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(buf); err == nil {
		t.Error("connection still open after the floor stopped")
	}
}

func TestFloorFlags(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"-policy", "", "-dovecot", ""}, "give -policy, -dovecot or both"},
		{[]string{"-policy", "192.0.2.1:1"}, "not loopback"},
		{[]string{"-duration", "2h"}, "-duration must be"},
		{[]string{"extra"}, "unexpected arguments"},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), append([]string{"floor"}, c.args...), &out, &errOut); code != 2 {
			t.Errorf("floor %q = %d, want 2", c.args, code)
		}
		if !strings.Contains(errOut.String(), c.want) {
			t.Errorf("floor %q: stderr %q lacks %q", c.args, errOut.String(), c.want)
		}
	}
}
