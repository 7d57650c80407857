package policyd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// recorded is the request Postfix 3.7.11 sent at RCPT time (Debian 12), as
// recorded by a policy server. The recording stops before the empty line
// that ends the request.
func recorded(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "postfix-3.7-rcpt-request.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestRecordedRequest(t *testing.T) {
	raw := recorded(t)
	r, err := ReadRequest(bufio.NewReader(bytes.NewReader(raw)), Limits{})
	if err != nil {
		t.Fatalf("ReadRequest(recorded) = %v", err)
	}
	for name, want := range map[string]string{
		"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "127.0.0.2",
		"recipient": "postmaster@example.org", "sasl_username": "", "policy_context": "",
		"instance": "2d14.6b08ac41.78d76.0", "encryption_keysize": "0",
	} {
		if got := r.Get(name); got != want {
			t.Errorf("Get(%q) = %q, want %q", name, got, want)
		}
	}
	if r.Len() != 29 {
		t.Errorf("Len() = %d, want 29", r.Len())
	}
	var out bytes.Buffer
	if _, err := r.WriteTo(&out); err != nil || !bytes.Equal(out.Bytes(), raw) {
		t.Errorf("WriteTo = %v; output differs from the recording:\n%s", err, out.Bytes())
	}
}

// TestRecordedDecisions sends the recorded request, varied, to a real server
// and compares the raw replies with testdata/recorded-replies.golden.
func TestRecordedDecisions(t *testing.T) {
	base, err := ReadRequest(bufio.NewReader(bytes.NewReader(recorded(t))), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	storeDown := errors.New("store down")
	cases := []struct {
		name   string
		kv     []string
		server func(*fakeGuard) *Server
	}{
		{"as recorded", nil, nil},
		{"banned client", []string{"client_address", bannedAddr.String()}, nil},
		{"banned client at CONNECT", []string{"client_address", bannedAddr.String(), "protocol_state", "CONNECT"}, nil},
		{"authenticated", []string{"sasl_method", "PLAIN", "sasl_username", "alice@example.org"}, nil},
		{"authenticated over limit", []string{"sasl_method", "PLAIN", "sasl_username", overUser}, nil},
		{"IPv6 client", []string{"client_address", "2001:db8::1"}, nil},
		{"store down, fail open", nil, func(g *fakeGuard) *Server {
			g.hook = func(context.Context) error { return storeDown }
			return &Server{Guard: g, FailOpen: true}
		}},
		{"store down, fail closed", nil, func(g *fakeGuard) *Server {
			g.hook = func(context.Context) error { return storeDown }
			return &Server{Guard: g}
		}},
		{"custom actions", []string{"client_address", bannedAddr.String()}, func(g *fakeGuard) *Server {
			return &Server{Guard: g, RejectAction: "521 5.7.1 <a>\r\nbye"}
		}},
	}
	var got strings.Builder
	for _, c := range cases {
		g := newFake()
		s := &Server{Guard: g}
		if c.server != nil {
			s = c.server(g)
		}
		cl := dial(t, "tcp", start(t, s, "tcp"))
		r := base.Clone()
		for i := 0; i < len(c.kv); i += 2 {
			r.Set(c.kv[i], c.kv[i+1])
		}
		var req bytes.Buffer
		if _, err := r.WriteTo(&req); err != nil {
			t.Fatal(err)
		}
		cl.c.Write(req.Bytes())
		var reply strings.Builder
		for {
			line, err := cl.br.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: reading reply: %v", c.name, err)
			}
			reply.WriteString(line)
			if line == "\n" {
				break
			}
		}
		fmt.Fprintf(&got, "# %s\n%s", c.name, reply.String())
	}
	golden := filepath.Join("testdata", "recorded-replies.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got.String() != string(want) {
		t.Errorf("replies differ from %s (go test -update rewrites it):\n%s", golden, got.String())
	}
}
