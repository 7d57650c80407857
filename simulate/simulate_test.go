package simulate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/authhook"
)

// fakeServer is a tiny IMAP, POP3 or SMTP server on 127.0.0.1:0 that fails
// every login, from the refuseAt-th on with mailguard's refusal as Dovecot
// words it, and stops listening after closeAfter logins (0: never).
type fakeServer struct {
	t          *testing.T
	l          net.Listener
	proto      string
	refuseAt   int
	closeAfter int

	mu      sync.Mutex
	logins  int
	seen    []string // "user password" as received
	remotes []netip.Addr
	wg      sync.WaitGroup
}

func startFake(t *testing.T, proto string, refuseAt, closeAfter int) *fakeServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{t: t, l: l, proto: proto, refuseAt: refuseAt, closeAfter: closeAfter}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() { l.Close(); f.wg.Wait() })
	return f
}

func (f *fakeServer) addr() string { return f.l.Addr().String() }

func (f *fakeServer) accept() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			f.mu.Lock()
			f.remotes = append(f.remotes, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr())
			f.mu.Unlock()
			f.serve(c)
		}()
	}
}

// login records one login and tells whether it is refused.
func (f *fakeServer) login(user, password string) (refused bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logins++
	f.seen = append(f.seen, user+" "+password)
	if f.closeAfter > 0 && f.logins == f.closeAfter {
		f.l.Close()
	}
	return f.refuseAt > 0 && f.logins >= f.refuseAt
}

func (f *fakeServer) serve(c net.Conn) {
	r := bufio.NewReader(c)
	say := func(s string) { fmt.Fprintf(c, "%s\r\n", s) }
	read := func() string {
		l, _ := r.ReadString('\n')
		return strings.TrimRight(l, "\r\n")
	}
	msg := authhook.DefaultRejectMsg
	switch f.proto {
	case "imap":
		say("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot (Debian) ready.")
		l := read()
		var user, pass string
		if _, err := fmt.Sscanf(l, "a1 LOGIN %q %q", &user, &pass); err != nil {
			say("a1 BAD Error in IMAP command")
			return
		}
		if f.login(user, pass) {
			say("a1 NO [ALERT] " + msg)
			say("* BYE Disconnected for inactivity.")
			return
		}
		say("* CAPABILITY IMAP4rev1")
		say("a1 NO [AUTHENTICATIONFAILED] Authentication failed.")
		if read() == "a2 LOGOUT" {
			say("* BYE Logging out")
			say("a2 OK Logout completed.")
		}
	case "pop3":
		say("+OK Dovecot (Debian) ready.")
		user, ok := strings.CutPrefix(read(), "USER ")
		if !ok {
			say("-ERR Unknown command.")
			return
		}
		say("+OK")
		pass, _ := strings.CutPrefix(read(), "PASS ")
		if f.login(user, pass) {
			say("-ERR [AUTH] " + msg)
			return
		}
		say("-ERR [AUTH] Authentication failed.")
		read()
		say("+OK Logging out")
	case "smtp":
		say("220-mx.example.org ESMTP Postfix (Debian/GNU)")
		say("220 mx.example.org ESMTP")
		if !strings.HasPrefix(read(), "EHLO ") {
			return
		}
		say("250-mx.example.org")
		say("250-PIPELINING")
		say("250-AUTH PLAIN LOGIN")
		say("250 8BITMIME")
		ir, ok := strings.CutPrefix(read(), "AUTH PLAIN ")
		b, err := base64.StdEncoding.DecodeString(ir)
		parts := strings.Split(string(b), "\x00")
		if !ok || err != nil || len(parts) != 3 {
			say("501 5.5.2 Syntax error")
			return
		}
		if f.login(parts[1], parts[2]) {
			say("535 5.7.8 Error: authentication failed: " + msg)
		} else {
			say("535 5.7.8 Error: authentication failed: authentication failure")
		}
		if read() == "QUIT" {
			say("221 2.0.0 Bye")
		}
	}
}

func TestRun(t *testing.T) {
	for _, proto := range []string{"imap", "pop3", "smtp"} {
		t.Run(proto, func(t *testing.T) {
			f := startFake(t, proto, 3, 0)
			var out bytes.Buffer
			res, err := Run(context.Background(), Options{
				Target: f.addr(), Protocol: proto, User: `alice"\@example.org`, Password: "wrong",
				Attempts: 4, Source: netip.MustParseAddr("127.0.0.2"), Out: &out,
			})
			if err != nil {
				t.Fatalf("Run: %v\n%s", err, &out)
			}
			want := []Verdict{Failed, Failed, Refused, Refused}
			for i, a := range res.Attempts {
				if a.N != i+1 || a.Verdict != want[i] || a.Answer == "" {
					t.Errorf("attempt %d: %+v, want verdict %s", i+1, a, want[i])
				}
			}
			if len(res.Attempts) != 4 || res.RefusedAt != 3 {
				t.Errorf("%d attempts, refused at %d; want 4, 3", len(res.Attempts), res.RefusedAt)
			}
			if !strings.HasSuffix(out.String(), "mailguard started refusing at attempt 3\n") {
				t.Errorf("report:\n%s", &out)
			}
			if strings.Contains(out.String(), "wrong") {
				t.Errorf("the password is in the report:\n%s", &out)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			for _, s := range f.seen {
				if s != `alice"\@example.org wrong` {
					t.Errorf("server got login %q", s)
				}
			}
			for _, a := range f.remotes {
				if a != netip.MustParseAddr("127.0.0.2") {
					t.Errorf("connection from %s, want the source 127.0.0.2", a)
				}
			}
		})
	}
}

func TestRunNeverRefused(t *testing.T) {
	f := startFake(t, "imap", 0, 0)
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{Target: f.addr(), Protocol: "IMAP", User: "bob", Attempts: 3, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if res.RefusedAt != 0 || !strings.HasSuffix(out.String(), "never refused\n") {
		t.Errorf("refused at %d, report:\n%s", res.RefusedAt, &out)
	}
	// Without a password every attempt uses another one.
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) != 3 || f.seen[0] == f.seen[1] || f.seen[1] == f.seen[2] {
		t.Errorf("passwords %q, want 3 different ones", f.seen)
	}
}

// TestRunConnectionRefused: the server stops listening after the second
// login, as a firewall reject would look.
func TestRunConnectionRefused(t *testing.T) {
	f := startFake(t, "pop3", 0, 2)
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{Target: f.addr(), Protocol: "pop3", User: "bob", Password: "x", Attempts: 3, Out: &out})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, &out)
	}
	if got := res.Attempts[2].Verdict; got != ConnRefused || res.RefusedAt != 3 {
		t.Errorf("attempt 3: %s, refused at %d; want %s at 3\n%s", got, res.RefusedAt, ConnRefused, &out)
	}
}

func TestRunNothingListens(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	res, err := Run(context.Background(), Options{Target: addr, Protocol: "smtp", User: "bob", Attempts: 5})
	if err == nil || len(res.Attempts) != 1 || res.Attempts[0].Verdict != ConnRefused {
		t.Errorf("Run against a closed port: %+v, %v; want an error after one attempt", res, err)
	}
}

func TestRunCancel(t *testing.T) {
	f := startFake(t, "imap", 0, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, Options{Target: f.addr(), Protocol: "imap", User: "bob", Attempts: 3, Delay: time.Hour}); err != context.Canceled {
		t.Errorf("Run with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"host name", Options{Target: "localhost:143", Protocol: "imap", User: "a"}, "must be IP:port"},
		{"no port", Options{Target: "127.0.0.1", Protocol: "imap", User: "a"}, "must be IP:port"},
		{"port zero", Options{Target: "127.0.0.1:0", Protocol: "imap", User: "a"}, "no port"},
		{"protocol", Options{Target: "127.0.0.1:143", Protocol: "http", User: "a"}, "protocol"},
		{"no user", Options{Target: "127.0.0.1:143", Protocol: "imap"}, "no user"},
		{"CRLF", Options{Target: "127.0.0.1:143", Protocol: "imap", User: "a", Password: "x\r\na2 LOGOUT"}, "CR, LF"},
		{"too many", Options{Target: "127.0.0.1:143", Protocol: "imap", User: "a", Attempts: 5000}, "at most"},
		{"family", Options{Target: "[::1]:143", Protocol: "imap", User: "a", Source: netip.MustParseAddr("127.0.0.2")}, "address family"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Run(context.Background(), tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run(%+v) = %v, want an error with %q", tt.o, err, tt.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	o := Options{RejectMsg: "Go away"}
	for answer, want := range map[string]Verdict{
		"a1 NO [AUTHENTICATIONFAILED] Authentication failed.":         Failed,
		"a1 NO [ALERT] Temporary authentication failure":              Refused,
		"-ERR [AUTH] go away":                                         Refused,
		"-ERR [AUTH] Authentication failed.":                          Failed,
		"535 5.7.8 Error: authentication failed: Go away":             Refused,
		"535 5.7.8 Error: authentication failed: authentication fail": Failed,
	} {
		if got := o.classify(answer); got != want {
			t.Errorf("classify(%q) = %s, want %s", answer, got, want)
		}
	}
}
