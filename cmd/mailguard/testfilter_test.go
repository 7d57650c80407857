package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/logwatch/filter"
)

// runCLI runs the mailguard command line with args and stdin.
func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	g := &globals{}
	root := newRoot(g)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// test-filter over the Postfix log recorded from the real Postfix the e2e
// tests run (testdata/postfix.log): fail2ban-regex's summary line, hits
// per regex with the engine, the first missed lines.
func TestTestFilter(t *testing.T) {
	out, err := runCLI(t, "", "test-filter", "testdata/postfix.log", "postfix", "--mode", "aggressive", "--missed", "2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Filter: postfix, mode aggressive\n",
		"Lines: 36 lines, 0 ignored, 12 matched, 24 missed\n",
		"|   1) [3] regexp2 ^[^\\s\\[]*\\[<ADDR>\\]",
		"|   2) [3] re2     ^[A-Z]{4,} from",
		"|   3) [6] re2     ^from ",
		"Missed line(s) (first 2 of 24):\n  Nov 29 09:25:13 mx postfix/postfix-script",
		" lines/s]\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// Standard input, --print-matches, escaping of what the log holds, a line
// over the limit counted as missed, and a filter file given by path.
func TestTestFilterStdinAndPath(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "app.conf")
	if err := os.WriteFile(conf, []byte("[Definition]\nfailregex = ^bad <F-USER>\\S+</F-USER> from <ADDR>$\nignoreregex = from 10\\.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	in := "bad \x1b[31mevil from 192.0.2.1\r\n" +
		"bad bob from 10.0.0.1\n" +
		"bad " + strings.Repeat("x", 20000) + " from 192.0.2.2\n" +
		"good line\n" +
		"bad last from 192.0.2.3" // no final newline
	out, err := runCLI(t, in, "test-filter", "-", conf, "--print-matches")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`  192.0.2.1 user="\x1b[31mevil" | bad \x1b[31mevil from 192.0.2.1`,
		`  192.0.2.3 user="last" | bad last from 192.0.2.3`,
		"Lines: 5 lines, 1 ignored, 2 matched, 2 missed\n",
		"1 line(s) longer than 16384 bytes were not matched",
		"(line longer than the limit, not matched)",
		"  good line\n",
		"|   1) [2] re2     ^bad",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b") {
		t.Errorf("output carries a raw escape character:\n%q", out)
	}
}

func TestTestFilterErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown filter", []string{"test-filter", "-", "nonesuch"}, "nonesuch"},
		{"bad mode", []string{"test-filter", "-", "postfix", "--mode", "nope"}, `no mode "nope"`},
		{"missing log", []string{"test-filter", "/nonexistent.log", "postfix"}, "/nonexistent.log"},
		{"arguments", []string{"test-filter", "-"}, "takes 2 argument(s)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runCLI(t, "", tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) || exitCode(err) != exitUsage {
				t.Errorf("error %v (exit %d), want exit %d and %q", err, exitCode(err), exitUsage, tc.want)
			}
		})
	}
}

func TestTestFilterRate(t *testing.T) {
	ticks := []time.Time{time.Unix(0, 0), time.Unix(2, 0)}
	now := func() time.Time { v := ticks[0]; ticks = ticks[1:]; return v }
	f, err := openFilterForTest("postfix")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := runTestFilter(&out, strings.NewReader("a\nb\nc\nd\n"), "-", f, false, 0, now); err != nil {
		t.Fatal(err)
	}
	if want := "[processed in 2.00 sec, 2 lines/s]"; !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
}

func openFilterForTest(name string) (*filter.Filter, error) { return filter.Open(name, "", nil) }
