package e2e

import (
	"strings"
	"testing"
)

// A ban survives SIGKILL of the daemon: bans are journaled before the
// admin call returns.
func TestBanSurvivesKill9(t *testing.T) {
	d := NewDaemon(t)
	d.Start()
	d.MustCLI("ban", "192.0.2.77", "--jail", "dovecot", "--for", "2h")
	d.MustCLI("ban", "2001:db8:77::/64")
	d.Kill()
	d.Start()
	out := d.MustCLI("status")
	for _, want := range []string{"192.0.2.77", "2001:db8:77::/64"} {
		if !strings.Contains(out, want) {
			t.Errorf("after kill -9 and restart, status lacks %s:\n%s", want, out)
		}
	}
	got := d.MustCLI("status", "dovecot")
	if !strings.Contains(got, "Currently banned:\t1") || !strings.Contains(got, "1h59m") && !strings.Contains(got, "2h0m0s") {
		t.Errorf("status dovecot after restart:\n%s", got)
	}
}
