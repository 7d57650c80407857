package authhook

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
)

// secondFactorGuard is a fakeGuard whose after-auth check refuses the users
// in enrolled (a TOTP user from an unapproved device).
type secondFactorGuard struct {
	*fakeGuard
	enrolled map[string]bool
}

func (g *secondFactorGuard) CheckAfterAuth(ctx context.Context, a netip.Addr, user, protocol string) (CheckResult, error) {
	r, err := g.Check(ctx, a, user)
	g.mu.Lock()
	g.calls = append(g.calls, fmt.Sprintf("after-auth %s %s %s", a, user, protocol))
	g.mu.Unlock()
	r.SecondFactor = g.enrolled[user]
	return r, err
}

// TestSecondFactor: an AfterAuthGuard is asked only in the after-auth
// allow; its SecondFactor refuses there with SecondFactorMsg, for IMAP and
// for Postfix SASL (no session id) alike; the before-auth allow and users
// without TOTP are untouched.
func TestSecondFactor(t *testing.T) {
	g := &secondFactorGuard{newFakeGuard(), map[string]bool{"alice": true}}
	m := &fakeMetrics{}
	s := &Server{Guard: g, Log: discardLogger(), Metrics: m, SecondFactorMsg: "Approve this device at https://mail.example.org/totp"}
	want := Reply{Status: -1, Msg: "Approve this device at https://mail.example.org/totp"}
	for _, c := range []struct {
		name string
		body string
		want Reply
	}{
		{"imap", reqBody("192.0.2.1", "alice", "sess1", "protocol", "imap"), want},
		{"smtp sasl", reqBody("192.0.2.2", "alice", "", "protocol", "smtp"), want},
		{"no totp", reqBody("192.0.2.3", "bob", "sess2", "protocol", "imap"), Reply{}},
	} {
		g.takeCalls()
		if _, body := post(s, "allow", c.body); decodeReply(t, body) != (Reply{}) {
			t.Errorf("%s: before-auth allow = %s, want allow", c.name, body)
		}
		if calls := g.takeCalls(); len(calls) != 1 || calls[0][:5] != "check" {
			t.Errorf("%s: before-auth calls = %q, want one Check", c.name, calls)
		}
		if _, body := post(s, "allow", c.body); decodeReply(t, body) != c.want {
			t.Errorf("%s: after-auth allow = %s, want %+v", c.name, body, c.want)
		}
	}
	if got := m.all(); got != "allow, second-factor, allow, second-factor, allow, allow" {
		t.Errorf("verdicts = %s", got)
	}
}
