package policyd

import (
	"context"
	"net/netip"
	"testing"
)

// refFake is a RefGuard, as guard is with the audit trail on.
type refFake struct{ *fakeGuard }

func (f refFake) CheckRef(ctx context.Context, a netip.Addr, user string) (string, string, error) {
	banned, _, err := f.Check(ctx, a, user)
	if banned != "" {
		return banned, "k3x9q2m7ab", err
	}
	return "", "", err
}

// TestReplyRef: with ReplyRef a refusal's text ends in "(ref ID)"; without
// it the action is RejectAction as configured.
func TestReplyRef(t *testing.T) {
	for _, tc := range []struct {
		replyRef bool
		want     string
	}{
		{false, DefaultRejectAction},
		{true, DefaultRejectAction + " (ref k3x9q2m7ab)"},
	} {
		c := dial(t, "tcp", start(t, &Server{Guard: refFake{newFake()}, ReplyRef: tc.replyRef}, "tcp"))
		if got := c.ask(policyReq("client_address", "192.0.2.66")); got != tc.want {
			t.Errorf("ReplyRef %v: action = %q, want %q", tc.replyRef, got, tc.want)
		}
		if got := c.ask(policyReq("client_address", "192.0.2.1")); got != "DUNNO" {
			t.Errorf("ReplyRef %v: clean client: action = %q, want DUNNO", tc.replyRef, got)
		}
	}
}
