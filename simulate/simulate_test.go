package simulate

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testcert"
)

// fakeServer is a tiny IMAP, POP3 or SMTP server on 127.0.0.1:0 that fails
// every login, from the refuseAt-th on with mailguard's refusal (msg) as
// Dovecot words it, and stops listening after closeAfter logins (0: never).
// With tlsMode "starttls" it offers STARTTLS and refuses plaintext logins,
// with "tls" it speaks TLS from the first byte.
type fakeServer struct {
	t          *testing.T
	l          net.Listener
	proto      string
	refuseAt   int
	closeAfter int
	msg        string
	tlsMode    string
	noAuth     bool // SMTP: offer no AUTH

	mu      sync.Mutex
	logins  int
	seen    []string // "user password" as received
	remotes []netip.Addr
	wg      sync.WaitGroup
}

func newFake(t *testing.T, proto string, refuseAt, closeAfter int) *fakeServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{t: t, l: l, proto: proto, refuseAt: refuseAt, closeAfter: closeAfter, msg: DefaultRejectMsg}
	t.Cleanup(func() { l.Close(); f.wg.Wait() })
	return f
}

// start serves; set the fields before.
func (f *fakeServer) start() *fakeServer {
	f.wg.Add(1)
	go f.accept()
	return f
}

// serverTLS is a self-signed certificate for mx.example.org and 127.0.0.1.
func serverTLS(t *testing.T) *tls.Config {
	c, _ := testcert.New(t, "mx.example.org")
	return &tls.Config{Certificates: []tls.Certificate{c}}
}

func startFake(t *testing.T, proto string, refuseAt, closeAfter int) *fakeServer {
	return newFake(t, proto, refuseAt, closeAfter).start()
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
	if f.tlsMode == "tls" {
		tc := tls.Server(c, serverTLS(f.t))
		if tc.Handshake() != nil {
			return
		}
		c = tc
	}
	r := bufio.NewReader(c)
	say := func(s string) { fmt.Fprintf(c, "%s\r\n", s) }
	read := func() string {
		l, _ := r.ReadString('\n')
		return strings.TrimRight(l, "\r\n")
	}
	// upgrade starts TLS after a STARTTLS the server accepted.
	upgrade := func() bool {
		tc := tls.Server(c, serverTLS(f.t))
		if tc.Handshake() != nil {
			return false
		}
		c = tc
		r = bufio.NewReader(c)
		return true
	}
	msg := f.msg
	secure := f.tlsMode != "starttls"
	switch f.proto {
	case "imap":
		if secure {
			say("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot (Debian) ready.")
		} else {
			say("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ STARTTLS LOGINDISABLED] Dovecot (Debian) ready.")
		}
		l := read()
		if l == "a0 STARTTLS" {
			say("a0 OK Begin TLS negotiation now.")
			if !upgrade() {
				return
			}
			secure = true
			l = read()
		}
		if !secure {
			say("a1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.")
			return
		}
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
		l := read()
		if l == "STLS" {
			say("+OK Begin TLS negotiation now.")
			if !upgrade() {
				return
			}
			secure = true
			l = read()
		}
		user, ok := strings.CutPrefix(l, "USER ")
		if !ok {
			say("-ERR Unknown command.")
			return
		}
		if !secure {
			say("-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.")
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
		ehlo := func() bool {
			if !strings.HasPrefix(read(), "EHLO ") {
				return false
			}
			say("250-mx.example.org")
			say("250-PIPELINING")
			if !secure {
				say("250-STARTTLS")
			} else if !f.noAuth {
				say("250-AUTH PLAIN LOGIN")
			}
			say("250 8BITMIME")
			return true
		}
		if !ehlo() {
			return
		}
		l := read()
		if l == "STARTTLS" {
			say("220 2.0.0 Ready to start TLS")
			if !upgrade() {
				return
			}
			secure = true
			if !ehlo() {
				return
			}
			l = read()
		}
		ir, ok := strings.CutPrefix(l, "AUTH PLAIN ")
		b, err := base64.StdEncoding.DecodeString(ir)
		parts := strings.Split(string(b), "\x00")
		if !ok || err != nil || len(parts) != 3 {
			say("501 5.5.2 Syntax error")
			return
		}
		if f.login(parts[1], parts[2]) {
			say("535 5.7.8 Error: authentication failed: " + msg)
		} else {
			say("535 5.7.8 Error: authentication failed: ")
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
	tests := []struct {
		proto, answer string
		want          Verdict
	}{
		{"imap", "a1 NO [AUTHENTICATIONFAILED] Authentication failed.", Failed},
		{"imap", "a1 NO [ALERT] Temporary authentication failure", Refused},
		{"imap", "a1 NO [ALERT] Anything the admin wrote", Refused},
		{"imap", "a1 NO [UNAVAILABLE] Temporary authentication failure. [mx:2026-11-29 08:00:00]", TempFailed},
		{"imap", "a1 NO " + strings.ToUpper(DefaultRejectUserMsg), Refused},
		{"pop3", "-ERR [AUTH] " + DefaultRejectMsg, Refused},
		{"pop3", "-ERR [AUTH] go away", Refused}, // a changed reject_msg: not Dovecot's generic text
		{"pop3", "-ERR [AUTH] Authentication failed.", Failed},
		{"pop3", "-ERR [SYS/TEMP] Temporary authentication failure.", TempFailed},
		{"smtp", "535 5.7.8 Error: authentication failed: " + DefaultRejectMsg, Refused},
		{"smtp", "535 5.7.8 Error: authentication failed: Go away", Refused},
		{"smtp", "535 5.7.8 Error: authentication failed: ", Failed},
		{"smtp", "535 5.7.8 Error: authentication failed: authentication failure", Failed},
		{"smtp", "535 5.7.8 Error: authentication failed: UGFzc3dvcmQ6", Failed},
		{"smtp", "454 4.7.0 Temporary authentication failure: Connection lost to authentication server", TempFailed},
	}
	for _, tt := range tests {
		o := Options{Protocol: tt.proto, RejectMsg: "Go away", RejectUserMsg: DefaultRejectUserMsg}
		if got := o.classify(tt.answer); got != tt.want {
			t.Errorf("%s: classify(%q) = %s, want %s", tt.proto, tt.answer, got, tt.want)
		}
	}
}

// A daemon whose reject_msg differs from simulate's --reject-msg is still
// recognised by the shape of its answers (the bug of issue 9.2).
func TestRunChangedRejectMsg(t *testing.T) {
	for _, proto := range []string{"imap", "pop3", "smtp"} {
		t.Run(proto, func(t *testing.T) {
			f := newFake(t, proto, 2, 0)
			f.msg = "Too many failed logins, try again later"
			f.start()
			var out bytes.Buffer
			res, err := Run(context.Background(), Options{Target: f.addr(), Protocol: proto, User: "bob", Attempts: 3, Out: &out})
			if err != nil || res.RefusedAt != 2 {
				t.Errorf("Run = refused at %d, %v; want 2, nil\n%s", res.RefusedAt, err, &out)
			}
		})
	}
}

// --starttls and --tls against servers that want TLS, with a certificate
// made by the test: --insecure accepts it, without it the run stops at once
// with a hint, and so does a plaintext run.
func TestRunTLS(t *testing.T) {
	for _, proto := range []string{"imap", "pop3", "smtp"} {
		for _, mode := range []string{"starttls", "tls"} {
			t.Run(proto+"/"+mode, func(t *testing.T) {
				f := newFake(t, proto, 3, 0)
				f.tlsMode = mode
				f.start()
				o := Options{Target: f.addr(), Protocol: proto, User: "bob", Password: "wrong", Attempts: 4,
					StartTLS: mode == "starttls", TLS: mode == "tls", Insecure: true}
				var out bytes.Buffer
				o.Out = &out
				res, err := Run(context.Background(), o)
				if err != nil || res.RefusedAt != 3 {
					t.Fatalf("Run with --%s --insecure = refused at %d, %v; want 3, nil\n%s", mode, res.RefusedAt, err, &out)
				}
				if !strings.Contains(out.String(), "with STARTTLS") && !strings.Contains(out.String(), "over TLS") {
					t.Errorf("the report does not say TLS was used:\n%s", &out)
				}

				// The certificate is self-signed: verification fails.
				o.Insecure, out = false, bytes.Buffer{}
				res, err = Run(context.Background(), o)
				var se *SetupError
				if !errors.As(err, &se) || len(res.Attempts) != 1 || !strings.Contains(se.Hint, "--insecure") {
					t.Errorf("Run with an untrusted certificate = %d attempts, %v; want a setup error after one, hinting --insecure\n%s", len(res.Attempts), err, &out)
				}
				if strings.Contains(out.String(), "never refused") {
					t.Errorf("a setup error reported as \"never refused\":\n%s", &out)
				}
			})
		}
		t.Run(proto+"/plaintext refused", func(t *testing.T) {
			f := newFake(t, proto, 0, 0)
			f.tlsMode = "starttls"
			f.start()
			var out bytes.Buffer
			res, err := Run(context.Background(), Options{Target: f.addr(), Protocol: proto, User: "bob", Attempts: 5, Out: &out})
			var se *SetupError
			if !errors.As(err, &se) || len(res.Attempts) != 1 || !strings.Contains(se.Hint, "--starttls") {
				t.Errorf("plaintext against a TLS-only server = %d attempts, %v; want a setup error after one, hinting --starttls\n%s", len(res.Attempts), err, &out)
			}
			if strings.Contains(out.String(), "never refused") {
				t.Errorf("a setup error reported as \"never refused\":\n%s", &out)
			}
		})
	}
}

func TestRunNoAuthOffered(t *testing.T) {
	f := newFake(t, "smtp", 0, 0)
	f.noAuth = true
	f.start()
	_, err := Run(context.Background(), Options{Target: f.addr(), Protocol: "smtp", User: "bob", Attempts: 3})
	var se *SetupError
	if !errors.As(err, &se) || !strings.Contains(se.Problem, "no AUTH PLAIN") || !strings.Contains(se.Hint, "submission") {
		t.Errorf("Run against a server without AUTH = %v; want a setup error with a hint", err)
	}
}

// timeoutDial makes connections from the source time out, as a firewall
// drop does, and lets others through.
func timeoutDial(ctx context.Context, source netip.Addr, target netip.AddrPort) (net.Conn, error) {
	if source.IsValid() {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", target.String())
}

// A source dropped by the firewall from an earlier run is reported as
// likely banned, not as a server that is not running.
func TestRunAlreadyBanned(t *testing.T) {
	f := startFake(t, "imap", 0, 0)
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{Target: f.addr(), Protocol: "imap", User: "bob", Attempts: 3,
		Source: netip.MustParseAddr("127.0.0.2"), Out: &out, dial: timeoutDial})
	if err != nil || !res.Banned || res.RefusedAt != 1 || len(res.Attempts) != 1 {
		t.Fatalf("Run = %+v, %v; want banned at attempt 1\n%s", res, err, &out)
	}
	if !strings.Contains(out.String(), "127.0.0.2 is likely banned") || strings.Contains(out.String(), "is the server running") {
		t.Errorf("report:\n%s", &out)
	}
	// Without a source to compare with, it cannot tell.
	res, err = Run(context.Background(), Options{Target: f.addr(), Protocol: "imap", User: "bob", Attempts: 3,
		dial: func(context.Context, netip.Addr, netip.AddrPort) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
		}})
	if err == nil || res.Banned {
		t.Errorf("Run with every dial timing out = %+v, %v; want an error", res, err)
	}
}

// simulate is a client: it must not depend on the daemon's packages.
func TestImportsNoServerPackage(t *testing.T) {
	p, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range p.Imports {
		if strings.HasPrefix(imp, "github.com/mailguard/mailguard/") {
			t.Errorf("simulate imports %s", imp)
		}
	}
}
