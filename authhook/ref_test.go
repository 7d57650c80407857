package authhook

import (
	"context"
	"net/netip"
	"strings"
	"testing"
)

// refGuard names its refusals, as guard does with the audit trail on.
type refGuard struct{ *fakeGuard }

func (g refGuard) Check(ctx context.Context, a netip.Addr, user string) (CheckResult, error) {
	v, err := g.fakeGuard.Check(ctx, a, user)
	if v.Refused {
		v.Ref = "k3x9q2m7ab"
	}
	return v, err
}

// TestReplyRef: the refusal's reference is in the log line always, and in
// Dovecot's msg only with ReplyRef.
func TestReplyRef(t *testing.T) {
	for _, replyRef := range []bool{false, true} {
		log, buf := testLogger(t)
		s := &Server{Guard: refGuard{newFakeGuard("192.0.2.66")}, Log: log, ReplyRef: replyRef}
		code, body := post(s, "allow", reqBody("192.0.2.66", "alice", "s1"))
		r := decodeReply(t, body)
		wantMsg := DefaultRejectMsg
		if replyRef {
			wantMsg += " (ref k3x9q2m7ab)"
		}
		if code != 200 || r.Status != -1 || r.Msg != wantMsg {
			t.Errorf("ReplyRef %v: %d %+v, want status -1 msg %q", replyRef, code, r, wantMsg)
		}
		if !strings.Contains(buf.String(), "ref=k3x9q2m7ab") {
			t.Errorf("ReplyRef %v: log lacks ref=k3x9q2m7ab:\n%s", replyRef, buf.String())
		}
	}
}
