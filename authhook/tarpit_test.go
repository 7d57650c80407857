package authhook

import (
	"fmt"
	"testing"
	"time"
)

func TestTarpitDelayFor(t *testing.T) {
	tests := []struct {
		name                   string
		t                      Tarpit
		failures, userFailures int
		protocol               string
		want                   time.Duration
	}{
		{"imap, the client's failures", DefaultTarpit, 6, 0, "imap", 5 * time.Second},
		{"pop3, the client's failures", DefaultTarpit, 5, 0, "pop3", 4 * time.Second},
		{"smtp capped at SMTPMax", DefaultTarpit, 6, 0, "smtp", 3 * time.Second},
		{"submission capped at SMTPMax", DefaultTarpit, 1 << 20, 0, "submission", 3 * time.Second},
		{"smtp below the cap", DefaultTarpit, 4, 0, "smtp", 2 * time.Second},
		{"the user's failures elsewhere: at most UserMax", DefaultTarpit, 0, 19, "imap", time.Second},
		{"the client's own failures win", DefaultTarpit, 4, 19, "imap", 2 * time.Second},
		{"user failures below start", DefaultTarpit, 0, 2, "imap", 0},
		{"no failures", DefaultTarpit, 0, 0, "smtp", 0},
		{"own SMTPMax", Tarpit{Start: 1, Base: time.Second, Max: 8 * time.Second, SMTPMax: time.Second}, 5, 0, "smtp", time.Second},
		{"own UserMax", Tarpit{Start: 1, Base: time.Second, Max: 8 * time.Second, UserMax: 4 * time.Second}, 0, 5, "imap", 4 * time.Second},
		{"zero caps take the defaults", Tarpit{Start: 1, Base: time.Second, Max: 8 * time.Second}, 3, 9, "smtp", 3 * time.Second},
		{"zero value never delays", Tarpit{}, 100, 100, "imap", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.t.DelayFor(tt.failures, tt.userFailures, tt.protocol); got != tt.want {
				t.Errorf("%+v.DelayFor(%d, %d, %q) = %v, want %v", tt.t, tt.failures, tt.userFailures, tt.protocol, got, tt.want)
			}
		})
	}
}

// TestTarpitSMTPBudget: whatever the failures, SMTP AUTH's tarpit plus
// Dovecot's auth_failure_delay (2 s) stays well within Postfix's 10 s.
func TestTarpitSMTPBudget(t *testing.T) {
	const authFailureDelay, postfixWait = 2 * time.Second, 10 * time.Second
	for _, proto := range []string{"smtp", "submission"} {
		for n := range 64 {
			if d := time.Duration(DefaultTarpit.status(n, n, proto)) * time.Second; d+authFailureDelay > postfixWait-4*time.Second {
				t.Fatalf("%s with %d failures: tarpit %v + auth_failure_delay leaves less than 4s of Postfix's %v", proto, n, d, postfixWait)
			}
		}
	}
}

// TestTarpitByProtocol: the statuses Dovecot sees for one client with many
// failures, over IMAP and over SMTP AUTH, and for a user others guessed at.
func TestTarpitByProtocol(t *testing.T) {
	g := newFakeGuard()
	g.setFailures("192.0.2.9", 10)
	g.mu.Lock()
	g.userFailures["alice"] = 30
	g.mu.Unlock()
	log, _ := testLogger(t)
	s := &Server{Guard: g, Log: log, Tarpit: DefaultTarpit}
	tests := []struct {
		remote, login, protocol string
		want                    int
	}{
		{"192.0.2.9", "bob", "imap", 5},
		{"192.0.2.9", "bob", "pop3", 5},
		{"192.0.2.9", "bob", "smtp", 3},
		{"192.0.2.9", "bob", "submission", 3},
		{"198.51.100.7", "alice", "imap", 1}, // the right password from a new network
		{"198.51.100.7", "alice", "smtp", 1},
		{"198.51.100.7", "bob", "imap", 0},
	}
	for i, tt := range tests {
		_, out := post(s, "allow", reqBody(tt.remote, tt.login, fmt.Sprint("s", i), "protocol", tt.protocol))
		if got := decodeReply(t, out).Status; got != tt.want {
			t.Errorf("allow %s as %s over %s: status %d, want %d", tt.remote, tt.login, tt.protocol, got, tt.want)
		}
	}
}

// TestRejectUserMsg: a refusal about the user's account says so, one about
// the client's network keeps RejectMsg.
func TestRejectUserMsg(t *testing.T) {
	g := newFakeGuard("192.0.2.66")
	g.mu.Lock()
	g.userBanned["alice"] = true
	g.mu.Unlock()
	for _, tt := range []struct {
		name string
		s    *Server
		user string
		want Reply
	}{
		{"user ban, default", &Server{Guard: g}, "alice", Reply{Status: -1, Msg: DefaultRejectUserMsg}},
		{"user ban, own", &Server{Guard: g, RejectUserMsg: "Your account is\r\nlocked"}, "alice", Reply{Status: -1, Msg: "Your account is locked"}},
		{"address ban", &Server{Guard: g, RejectMsg: "Go away"}, "bob", Reply{Status: -1, Msg: "Go away"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			log, _ := testLogger(t)
			tt.s.Log = log
			remote := "198.51.100.7"
			if tt.user == "bob" {
				remote = "192.0.2.66"
			}
			_, out := post(tt.s, "allow", reqBody(remote, tt.user, "s1"))
			if got := decodeReply(t, out); got != tt.want {
				t.Errorf("allow: %+v, want %+v", got, tt.want)
			}
		})
	}
}
