package logwatch

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
)

// fakeJournalctl writes a journalctl stand-in that records its arguments
// and prints entries, then waits to be killed (as journalctl -f does).
func fakeJournalctl(t *testing.T, entries string) (cmd, argsFile string) {
	t.Helper()
	dir := t.TempDir()
	argsFile = filepath.Join(dir, "args")
	data := filepath.Join(dir, "entries")
	if err := os.WriteFile(data, []byte(entries), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd = filepath.Join(dir, "journalctl")
	script := fmt.Sprintf("#!/bin/sh\necho \"$@\" > %s.tmp && mv %s.tmp %s\ncat %s\nexec sleep 3600\n", argsFile, argsFile, argsFile, data)
	if err := os.WriteFile(cmd, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return cmd, argsFile
}

const journalEntries = `{"__CURSOR":"s=1;i=1","__REALTIME_TIMESTAMP":"1764406800000000","_HOSTNAME":"mx1","SYSLOG_IDENTIFIER":"postfix/smtpd","_PID":"4242","MESSAGE":"NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"}
not json at all
{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1764406801000000","_HOSTNAME":"mx1","SYSLOG_IDENTIFIER":"postfix/smtpd","_PID":"4242","MESSAGE":[98,97,100,32,255,254]}
`

func TestJournalParsesEntriesAndKeepsCursor(t *testing.T) {
	state := t.TempDir()
	cmd, argsFile := fakeJournalctl(t, journalEntries)
	now := time.Date(2026, 11, 29, 9, 0, 0, 0, time.UTC)
	run := func(at time.Time) (*collector, string) {
		t.Helper()
		c := newCollector()
		j := &Journal{Matches: []string{"_SYSTEMD_UNIT=postfix@-.service"}, StateDir: state, Command: cmd, Now: func() time.Time { return at }}
		if err := j.Start(context.Background(), c.deliver); err != nil {
			t.Fatalf("Start = %v", err)
		}
		c.waitN(t, 2)
		j.Stop()
		args, err := os.ReadFile(argsFile)
		if err != nil {
			t.Fatal(err)
		}
		return c, strings.TrimSpace(string(args))
	}

	c, args := run(now)
	if want := "--follow --output=json --no-pager --quiet --lines=0 _SYSTEMD_UNIT=postfix@-.service"; args != want {
		t.Errorf("first run args = %q, want %q", args, want)
	}
	want := []Line{
		{Path: "journal", Text: []byte("mx1 postfix/smtpd[4242]: NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"), Time: time.UnixMicro(1764406800000000)},
		{Path: "journal", Text: []byte("mx1 postfix/smtpd[4242]: bad \xff\xfe"), Time: time.UnixMicro(1764406801000000)},
	}
	for i, w := range want {
		got := c.lines[i]
		if string(got.Text) != string(w.Text) || !got.Time.Equal(w.Time) || got.Path != w.Path {
			t.Errorf("entry %d = %q at %v, want %q at %v", i, got.Text, got.Time, w.Text, w.Time)
		}
	}

	if _, args := run(now.Add(time.Minute)); !strings.Contains(args, "--after-cursor=s=1;i=2") {
		t.Errorf("restart args = %q, want --after-cursor=s=1;i=2", args)
	}
	if _, args := run(now.Add(time.Minute + DefaultBacklog + time.Second)); !strings.Contains(args, "--lines=0") {
		t.Errorf("restart after more than the backlog: args = %q, want --lines=0 (start at the end)", args)
	}
}

func TestJournalMissingCommand(t *testing.T) {
	j := &Journal{Command: filepath.Join(t.TempDir(), "no-journalctl")}
	if err := j.Start(context.Background(), func(Line) {}); err == nil {
		j.Stop()
		t.Fatal("Start with a missing journalctl = nil, want an error")
	}
	if j.Health() == nil {
		t.Error("Health() after a failed Start = nil, want the error")
	}
}

// TestJournalReal follows a real systemd-journald: the machine's, or, where
// none runs (a container without systemd, as in CI), one of the test's own in
// a private mount namespace, reached through nsenter.
func TestJournalReal(t *testing.T) {
	journalctl, cat := "journalctl", "systemd-cat"
	if _, err := os.Stat("/run/systemd/journal/socket"); err != nil {
		journalctl, cat = privateJournald(t)
	} else if cat, err = exec.LookPath(cat); err != nil {
		testenv.Missing(t, "systemd-cat not installed: cannot write to the journal (make test installs systemd as root)")
	}
	tag := fmt.Sprintf("mailguard-test-%d", time.Now().UnixNano())
	c := newCollector()
	j := &Journal{Matches: []string{"SYSLOG_IDENTIFIER=" + tag}, StateDir: t.TempDir(), Command: journalctl}
	if err := j.Start(context.Background(), c.deliver); err != nil {
		t.Fatalf("Start = %v", err)
	}
	defer j.Stop()
	// journalctl -f --lines=0 only shows entries after it started: write
	// until the first arrives (bounded), then check the text.
	deadline := time.Now().Add(wait)
	for c.count() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no entry from journald after %v (Health: %v)", wait, j.Health())
		}
		cmd := exec.Command(cat, "-t", tag)
		cmd.Stdin = strings.NewReader("SASL LOGIN authentication failed\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("systemd-cat: %v: %s", err, out)
		}
		select {
		case <-c.more:
		case <-time.After(time.Second):
		}
	}
	if got := c.texts()[0]; !strings.Contains(got, tag+"[") || !strings.HasSuffix(got, ": SASL LOGIN authentication failed") {
		t.Errorf("journal line = %q, want %s[PID]: SASL LOGIN authentication failed", got, tag)
	}
}

// privateJournald starts systemd-journald in a mount namespace of its own,
// with its own /run (its sockets, and the volatile journal under /run/log)
// and a journald.conf that keeps the journal there: nothing of it is seen
// from the machine, and the machine's /run/systemd is left alone (other
// tests, and the default postfix jail, look there for a journald). It
// returns a journalctl and a systemd-cat that run inside that namespace.
func privateJournald(t *testing.T) (journalctl, cat string) {
	t.Helper()
	testenv.Root(t)
	unshare, nsenter := testenv.Command(t, "unshare"), testenv.Command(t, "nsenter")
	testenv.Command(t, "systemd-cat")
	journald := ""
	for _, p := range []string{"/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"} {
		if _, err := os.Stat(p); err == nil {
			journald = p
			break
		}
	}
	if journald == "" {
		testenv.Missing(t, "no systemd-journald running and none installed (make test installs systemd as root)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "journald.conf")
	if err := os.WriteFile(conf, []byte("[Journal]\nStorage=volatile\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`set -e
mount -t tmpfs -o mode=0755 tmpfs /run
if [ -e /etc/systemd/journald.conf ]; then mount --bind %[1]s /etc/systemd/journald.conf; fi
if [ -d /etc/systemd/journald.conf.d ]; then mount -t tmpfs tmpfs /etc/systemd/journald.conf.d; fi
exec %[2]s`, conf, journald)
	out, err := os.Create(filepath.Join(dir, "journald.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	output := func() string { b, _ := os.ReadFile(out.Name()); return string(b) }
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting journald: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	pid := cmd.Process.Pid // sh execs journald: its pid
	wrap := func(name string) string {
		p := filepath.Join(dir, name)
		script := fmt.Sprintf("#!/bin/sh\nexec %s --target %d --mount -- %s \"$@\"\n", nsenter, pid, name)
		if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	journalctl, cat = wrap("journalctl"), wrap("systemd-cat")
	// Ready when its stream socket is there.
	deadline := time.Now().Add(wait)
	for {
		select {
		case err := <-exited:
			t.Fatalf("journald exited: %v: %s", err, output())
		default:
		}
		if exec.Command(nsenter, "--target", strconv.Itoa(pid), "--mount", "--", "test", "-S", "/run/systemd/journal/stdout").Run() == nil {
			return journalctl, cat
		}
		if time.Now().After(deadline) {
			t.Fatalf("journald's socket did not appear within %v: %s", wait, output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
