package main

import (
	"testing"

	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/simulate"
)

// simulate is a client and does not import the daemon's packages, so it
// spells the daemon's default messages itself: they must stay equal.
func TestSimulateKnowsTheDefaultMessages(t *testing.T) {
	d := config.Defaults()
	if d.Dovecot.RejectMsg != simulate.DefaultRejectMsg {
		t.Errorf("dovecot.reject_msg default %q, simulate.DefaultRejectMsg %q", d.Dovecot.RejectMsg, simulate.DefaultRejectMsg)
	}
	if d.Dovecot.RejectMsgUser != simulate.DefaultRejectUserMsg {
		t.Errorf("dovecot.reject_msg_user default %q, simulate.DefaultRejectUserMsg %q", d.Dovecot.RejectMsgUser, simulate.DefaultRejectUserMsg)
	}
}
