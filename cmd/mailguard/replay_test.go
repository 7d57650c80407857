package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// replay over the recorded day of package replay, split as a rotated audit
// file: the stricter config's differences, the known device it would
// refuse (exit 1), the bad line named by file and number.
func TestReplayCommand(t *testing.T) {
	day, err := os.ReadFile("../../replay/testdata/day.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(day), "\n")
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(path+".1", []byte(strings.Join(lines[:40], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("{\"v\":1,\"id\":\"x\n"+strings.Join(lines[40:], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	known := filepath.Join(dir, "known")
	if err := os.WriteFile(known, []byte("# login address\nalice@example.org 198.51.100.10\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MAILGUARD_STATE_DIR", dir)

	out, err := runCLI(t, "", "replay", "--config", "testdata/replay-stricter.yaml", "--known", known, path)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitRefused || !strings.Contains(err.Error(), "refuses 1 login(s) from known devices (") {
		t.Errorf("err = %v, want exit %d for the known device", err, exitRefused)
	}
	for _, want := range []string{
		"+ net:203.0.113.8/32 dovecot 2026-11-28T02:04:00Z bantime=1h0m0s",
		"+ net:198.51.100.10/32 dovecot ",
		`+ user:root\x1b[2j\u202e@example.org dovecot-user `,
		"jail dovecot: 37 failures counted, bans recorded 3, replayed 5 (+2 -0)",
		"!!! USERS REFUSED FROM THEIR KNOWN DEVICES: 1",
		path + " line 1: unexpected end of JSON input",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// The recorded config (the defaults) finds no difference.
	out, err = runCLI(t, "", "replay", "--config", "/dev/null", "--json", path)
	if err != nil || !strings.Contains(out, `"added": []`) || !strings.Contains(out, `"removed": []`) {
		t.Errorf("defaults: err %v, output:\n%s", err, out)
	}

	// No audit file named nor configured.
	_, err = runCLI(t, "", "replay", "--config", "/dev/null", "--running", "/dev/null")
	if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(err.Error(), "no audit file") {
		t.Errorf("without an audit file: err %v, want a usage error", err)
	}
	// A bad known-devices file names its line.
	if err := os.WriteFile(known, []byte("alice@example.org 198.51.100.300\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = runCLI(t, "", "replay", "--config", "/dev/null", "--known", known, path)
	if err == nil || !strings.Contains(err.Error(), "line 1: invalid address") {
		t.Errorf("bad --known: err %v", err)
	}
}
