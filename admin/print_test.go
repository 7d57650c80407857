package admin

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// The status layout of every kind of jail, against testdata/status.golden
// (go test ./admin -update rewrites it).
func TestPrintStatusGolden(t *testing.T) {
	now := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)
	ban := func(jail, subject string, left time.Duration, reason string) Ban {
		return Ban{Jail: jail, Subject: subject, Created: now.Add(-time.Minute), Expires: now.Add(left), Nth: 1, Reason: reason}
	}
	jails := []JailStatus{
		{Name: "dovecot", Key: "prefix", Action: "firewall", MaxRetry: 5, FindTime: "10m0s", BanTime: "1h0m0s",
			Events: []string{"auth-failure"}, Failing: 2, TotalFailed: 37, TotalBanned: 4,
			ByProtocol: map[string]int64{"imap": 30, "smtp": 7},
			Banned:     []Ban{ban("dovecot", "net:2001:db8:7::/64", 47*time.Minute, "auth-failure imap"), ban("dovecot", "net:192.0.2.7/32", time.Hour, "auth-failure pop3")}},
		{Name: "dovecot-user", Key: "user", Action: "refuse", MaxRetry: 20, FindTime: "1h0m0s", BanTime: "1h0m0s",
			Events: []string{"auth-failure"}, Failing: 1, TotalFailed: 20, TotalBanned: 1,
			Banned: []Ban{ban("dovecot-user", "user:\x1b[2J\x1b[31mevil\n`- Banned IP list:\t203.0.113.9", 30*time.Minute, "auth-failure imap")}},
		{Name: "postfix-rate", Key: "user", Action: "refuse", MaxRetry: 500, FindTime: "1h0m0s", BanTime: "0s",
			Events: []string{"rcpt"}, Failing: 3, TotalFailed: 1200, Banned: []Ban{}},
		{Name: "manual", Action: "firewall", BanTime: "1h0m0s", TotalBanned: 2,
			Banned: []Ban{ban("manual", "net:198.51.100.9/32", 10*time.Minute, "manual"), ban("manual", "user:mallory@example.org", time.Hour, "manual")}},
	}
	var b bytes.Buffer
	PrintStatus(&b, jails, now)
	got := b.String()
	if strings.ContainsAny(got, "\x1b") || strings.Contains(got, "\n`- Banned IP list:\t203.0.113.9") {
		t.Errorf("a login's escape sequence or forged line reached the output:\n%s", got)
	}
	const golden = "testdata/status.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("PrintStatus differs from %s (-update rewrites it):\ngot:\n%s\nwant:\n%s", golden, got, want)
	}
}
