package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Escalation survives a kill -9: a client banned by failures, unbanned,
// then the daemon killed and restarted, is banned again as ban #2 with the
// escalated bantime (bantime × factor).
func TestRecidiveAcrossKill9(t *testing.T) {
	d := NewDaemon(t, "jails.dovecot.maxretry=3", "jails.dovecot.bantime=1h", "recidive.factor=3")
	d.Start()
	const client = "192.0.2.66"
	fail := func(round int) {
		t.Helper()
		for i := range 3 {
			dovecotReport(t, d.Dovecot, client, fmt.Sprintf("e2e-recidive-%d-%d", round, i))
		}
	}

	fail(1)
	if nth, left := banOf(t, d, client); nth != 1 || left < 59*time.Minute || left > time.Hour {
		t.Fatalf("first ban: #%d, %v left; want #1, about 1h", nth, left)
	}
	d.MustCLI("unban", client)
	d.Kill()
	d.Start()
	if out := d.MustCLI("status", "dovecot"); strings.Contains(out, client) {
		t.Fatalf("the unban did not survive the restart:\n%s", out)
	}
	fail(2)
	if nth, left := banOf(t, d, client); nth != 2 || left < 179*time.Minute || left > 3*time.Hour {
		t.Fatalf("ban after unban, kill -9 and restart: #%d, %v left; want #2, about 3h (1h × factor 3)", nth, left)
	}
}

// banLine is a ban in `mailguard status JAIL`: "ADDR[/LEN]\tXhYmZs left (ban #N, ...".
var banLine = regexp.MustCompile(`(?m)^\s*(\S+)\t(\S+) left \(ban #(\d+),`)

// banOf returns the ban number and time left of client's ban in the
// dovecot jail, from `mailguard status dovecot`.
func banOf(t *testing.T, d *Daemon, client string) (int, time.Duration) {
	t.Helper()
	out := d.MustCLI("status", "dovecot")
	for _, m := range banLine.FindAllStringSubmatch(out, -1) {
		if m[1] != client && !strings.HasPrefix(m[1], client+"/") {
			continue
		}
		left, err := time.ParseDuration(m[2])
		if err != nil {
			t.Fatalf("status line %q: %v", m[0], err)
		}
		var nth int
		fmt.Sscan(m[3], &nth)
		return nth, left
	}
	t.Fatalf("status dovecot lists no ban of %s:\n%s", client, out)
	return 0, 0
}
