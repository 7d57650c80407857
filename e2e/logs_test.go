package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// jailLogs appends a jails block to the daemon's config: jail reads the
// file path through filter.
func jailLogs(t *testing.T, d *Daemon, jail, path, filter string) {
	t.Helper()
	f, err := os.OpenFile(d.Config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "jails:\n  %s:\n    logs:\n      - path: %s\n        filter: %s\n", jail, path, filter)
}

// jailStatus is the part of `status --json` these tests read.
type jailStatus struct {
	Name        string           `json:"name"`
	TotalFailed int64            `json:"total_failed"`
	ByProtocol  map[string]int64 `json:"failed_by_protocol"`
	Logs        []string         `json:"logs"`
	Banned      []struct {
		Subject string `json:"subject"`
		Reason  string `json:"reason"`
	} `json:"banned"`
}

func statusOf(t *testing.T, d *Daemon, jail string) jailStatus {
	t.Helper()
	var st []jailStatus
	if err := json.Unmarshal([]byte(d.MustCLI("status", jail, "--json")), &st); err != nil || len(st) != 1 {
		t.Fatalf("status %s --json: %v (%d jails)", jail, err, len(st))
	}
	return st[0]
}

// waitStatus polls the jail's status until ok holds (at most 20 s).
func waitStatus(t *testing.T, d *Daemon, jail string, ok func(jailStatus) bool) jailStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := statusOf(t, d, jail)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("jail %s never got there: %+v\nlog:\n%s", jail, st, d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A dictionary attack over real SMTP: RCPTs to unknown local users, which
// the real Postfix rejects and logs (maillog_file), until the postfix jail
// bans the client from its log; then the policy service refuses the next
// connection with 421. Another client is untouched.
func TestPostfixLogDictionaryAttack(t *testing.T) {
	testenv.Root(t)
	d := NewDaemon(t)
	// StartPostfix's maillog_file, known before it starts: the daemon
	// follows the file from its first line once Postfix creates it.
	maillog := "/var/tmp/" + filepath.Base(postfixDir(t)) + ".maillog"
	jailLogs(t, d, "postfix", maillog, "postfix")
	d.Start()
	// Debian's alias_maps, hash:/etc/aliases, needs the aliases.db that
	// Debian's postinst makes with newaliases; without it every unknown
	// recipient is a temporary lookup failure (451), not a 550. The
	// instance reads its own aliases as text instead (a harness detail:
	// the recipient check is Postfix's own).
	aliases := filepath.Join(postfixDir(t), "aliases")
	if err := os.WriteFile(aliases, []byte("postmaster: root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pf := StartPostfix(t, d.Postfix, PostfixOptions{Set: []string{"alias_maps=texthash:" + aliases}})
	if pf.Log != maillog {
		t.Fatalf("Postfix logs to %s, the daemon reads %s", pf.Log, maillog)
	}
	const attacker, other = "127.0.0.2", "127.0.0.3"
	source := "log:" + maillog + ":postfix"

	s := DialSMTP(t, pf.Addr, attacker)
	s.Cmd(t, "EHLO client.example.net")
	if r := s.Cmd(t, "MAIL FROM:<a@example.net>"); !strings.HasPrefix(r, "250") {
		t.Fatalf("MAIL FROM: %q", r)
	}
	const maxretry = 5 // the default postfix jail's
	for i := 1; i <= maxretry; i++ {
		r := s.Cmd(t, fmt.Sprintf("RCPT TO:<nosuchuser%d@mx.example.org>", i))
		if !strings.HasPrefix(r, "550 5.1.1") {
			t.Fatalf("RCPT to an unknown user #%d = %q, want 550 5.1.1", i, r)
		}
	}
	s.Cmd(t, "QUIT")
	st := waitStatus(t, d, "postfix", func(st jailStatus) bool { return len(st.Banned) > 0 })
	if st.Banned[0].Subject != "net:"+attacker+"/32" || st.Banned[0].Reason != source {
		t.Errorf("ban = %+v, want %s with reason %s", st.Banned[0], attacker, source)
	}
	if st.ByProtocol[source] != maxretry || len(st.Logs) != 1 || st.Logs[0] != source {
		t.Errorf("status: by protocol %v, logs %v; want %d from %s", st.ByProtocol, st.Logs, maxretry, source)
	}

	r, closed := rcpt(t, pf.Addr, attacker)
	if !strings.HasPrefix(r, "421 4.7.1") || !closed {
		t.Fatalf("after the ban, RCPT from %s = %q (closed %v), want 421 4.7.1 and a disconnect", attacker, r, closed)
	}
	if r, _ := rcpt(t, pf.Addr, other); !strings.HasPrefix(r, "250") {
		t.Fatalf("RCPT from %s = %q, want 250", other, r)
	}
	if n := metricSum(t, d.Metrics, "mailguard_log_matches_total", `jail="postfix"`); n < maxretry {
		t.Errorf("mailguard_log_matches_total{jail=postfix} = %v, want at least %d", n, maxretry)
	}
	if !strings.Contains(d.Log(), "msg=ban jail=postfix key=net:127.0.0.2/32") {
		t.Errorf("no ban line in the daemon's log:\n%s", d.Log())
	}
}

// Lines counted before a restart are not counted again after it, and a
// line written while the daemon was down is counted once it is back.
func TestLogRestartCountsOnce(t *testing.T) {
	d := NewDaemon(t)
	maillog := filepath.Join(t.TempDir(), "mail.log")
	if err := os.WriteFile(maillog, []byte("Nov 29 09:00:00 mx postfix/master[1]: daemon started\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	jailLogs(t, d, "postfix", maillog, "postfix")
	appendLines := func(n int) {
		t.Helper()
		f, err := os.OpenFile(maillog, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for i := range n {
			fmt.Fprintf(f, "Nov 29 09:25:15 mx postfix/smtpd[32009]: NOQUEUE: reject: RCPT from unknown[192.0.2.55]: 550 5.1.1 <nosuch%d@mx.example.org>: Recipient address rejected: User unknown in local recipient table; from=<a@example.net> to=<nosuch%d@mx.example.org> proto=ESMTP helo=<client.example.net>\n", i, i)
		}
	}
	d.Start()
	appendLines(3)
	waitStatus(t, d, "postfix", func(st jailStatus) bool { return st.TotalFailed == 3 })
	d.Stop()
	appendLines(1) // while down
	d.Start()
	appendLines(1)
	// Lines are read in order: once the last one is counted, any re-read
	// of the first three would be too (3 + 2 = 5 = maxretry: a ban).
	st := waitStatus(t, d, "postfix", func(st jailStatus) bool { return st.TotalFailed >= 2 })
	time.Sleep(time.Second) // a re-read after the new lines would be a bug too: give it a chance to show
	st = statusOf(t, d, "postfix")
	if st.TotalFailed != 2 || len(st.Banned) != 0 {
		t.Errorf("after a restart: %d failures counted, %d bans; want 2 (the line written while down and the new one), no ban", st.TotalFailed, len(st.Banned))
	}
}

// A jail fed by the Dovecot hook and by Dovecot's own log (the shipped
// dovecot filter) counts each failed login once: the real Dovecot reports
// it to the hook and logs it, and the log match pairs with the report.
func TestDovecotHookAndLogCountOnce(t *testing.T) {
	d := NewDaemon(t, "jails.dovecot.maxretry=10")
	// Dovecot first (it allows while mailguard is not up yet): its log path
	// goes into the daemon's config.
	dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{})
	jailLogs(t, d, "dovecot", dv.Log, "dovecot")
	d.Start()
	if !strings.Contains(d.Log(), `msg="count once:`) || !strings.Contains(d.Log(), "jail=dovecot") {
		t.Errorf("the daemon did not say how the dovecot jail counts once:\n%s", d.Log())
	}
	const attacker, logins = "127.0.0.2", 3
	for i := range logins {
		if r := imapLogin(t, dv.IMAP, attacker, testUser, "wrong"); !strings.HasPrefix(r, "a1 NO") {
			t.Fatalf("wrong password %d = %q", i+1, r)
		}
	}
	// Wait for Dovecot's log lines to be matched, then for the counts.
	deadline := time.Now().Add(20 * time.Second)
	for metricSum(t, d.Metrics, "mailguard_log_matches_total", `jail="dovecot"`) < logins {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(dv.Log)
			t.Fatalf("the dovecot filter matched fewer than %d lines of Dovecot's log:\n%s", logins, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := statusOf(t, d, "dovecot")
	if st.TotalFailed != logins {
		t.Errorf("dovecot jail counted %d failures for %d failed logins (by protocol %v), want each once", st.TotalFailed, logins, st.ByProtocol)
	}
	if st.ByProtocol["imap"] != logins {
		t.Errorf("by protocol %v, want imap %d (the hook's reports; the log matches paired with them)", st.ByProtocol, logins)
	}
}

// A log source that cannot be read says so at start and in /healthz, and
// the daemon runs on.
func TestLogSourceUnreadable(t *testing.T) {
	d := NewDaemon(t)
	dir := t.TempDir() // a directory, not a log file
	jailLogs(t, d, "postfix", dir, "postfix")
	d.Start()
	if !strings.Contains(d.Log(), `msg="log source cannot be read"`) || !strings.Contains(d.Log(), "source=log:"+dir) {
		t.Errorf("the start did not say that %s cannot be read:\n%s", dir, d.Log())
	}
	code, body := healthz(t, d.Metrics)
	if code != 503 || !strings.Contains(body, "degraded: log:"+dir) {
		t.Errorf("/healthz = %d %q, want 503 naming log:%s", code, body, dir)
	}
	if n := metricSum(t, d.Metrics, "mailguard_log_source_up", `source="log:`+dir+`"`); n != 0 {
		t.Errorf("mailguard_log_source_up = %v, want 0", n)
	}
	if r, err := d.CLI("status", "postfix"); err != nil || !strings.Contains(r, "Logs:\tlog:"+dir+":postfix") {
		t.Errorf("status postfix: %v\n%s", err, r)
	}
}
