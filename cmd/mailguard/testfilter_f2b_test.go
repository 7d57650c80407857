package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The counts of mailguard test-filter equal fail2ban-regex's on the same
// log and the same filter file: the summary line, prefregex matches and
// the hits of each failregex. It runs Debian's fail2ban-regex when it is
// installed (make bench installs the fail2ban package; CI does not) and
// skips otherwise.
func TestTestFilterEqualsFail2banRegex(t *testing.T) {
	f2b, err := exec.LookPath("fail2ban-regex")
	if err != nil {
		t.Skip("fail2ban-regex is not installed (Debian package fail2ban; make bench installs it): nothing to compare with")
	}
	shipped := filepath.Join("..", "..", "logwatch", "filter", "filters")
	rec := filepath.Join("..", "..", "logwatch", "filter", "testdata")
	type run struct{ log, filter, mode string }
	// fail2ban's own filters, as the package installs them, load unchanged.
	var debian []run
	if _, err := os.Stat("/etc/fail2ban/filter.d/postfix.conf"); err == nil {
		d := "/etc/fail2ban/filter.d"
		debian = []run{
			{rec + "/postfix.log", d + "/postfix.conf", "normal"},
			{rec + "/postfix.log", d + "/postfix.conf", "aggressive"},
			{rec + "/postscreen.log", d + "/postfix.conf", "ddos"},
			{rec + "/dovecot.log", d + "/dovecot.conf", "aggressive"},
			{rec + "/roundcube.log", d + "/roundcube-auth.conf", ""},
			{rec + "/postfix.log", d + "/sshd.conf", "aggressive"},
		}
	}
	for _, tc := range append(debian, []run{
		{rec + "/postfix.log", shipped + "/postfix.conf", "normal"},
		{rec + "/postfix.log", shipped + "/postfix.conf", "aggressive"},
		{rec + "/postfix.log", shipped + "/postfix.conf", "auth"},
		{rec + "/postfix.log", shipped + "/postfix.conf", "errors"},
		{rec + "/postfix.log", shipped + "/postfix.conf", "rbl"},
		{rec + "/postfix.log", shipped + "/postfix-sasl.conf", ""},
		{rec + "/dovecot.log", shipped + "/dovecot.conf", "normal"},
		{rec + "/dovecot.log", shipped + "/dovecot.conf", "aggressive"},
		{rec + "/postscreen.log", shipped + "/postscreen.conf", ""},
		{rec + "/postscreen.log", shipped + "/postfix.conf", "aggressive"},
		{rec + "/postscreen.log", shipped + "/postfix.conf", "ddos"},
		{rec + "/postfix.log", shipped + "/postfix.conf", "ddos"},
		{rec + "/roundcube.log", shipped + "/roundcube-auth.conf", ""},
		{"testdata/f2b/session.log", "testdata/f2b/session.conf", ""},
		{"testdata/f2b/session.log", "testdata/f2b/session.conf", "aggressive"},
		{"testdata/f2b/dates.log", "testdata/f2b/dates.conf", ""},
		{"testdata/f2b/buffer.log", "testdata/f2b/buffer.conf", ""},
	}...) {
		name := filepath.Base(tc.log) + "/" + filepath.Base(filepath.Dir(tc.filter)) + "/" + filepath.Base(tc.filter) + "/" + tc.mode
		t.Run(name, func(t *testing.T) {
			arg := tc.filter
			args := []string{"test-filter", tc.log, tc.filter, "--missed", "0"}
			if tc.mode != "" {
				arg += "[mode=" + tc.mode + "]"
				args = append(args, "--mode", tc.mode)
			}
			cmd := exec.Command(f2b, tc.log, arg)
			theirs, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("fail2ban-regex: %v\n%s", err, theirs)
			}
			ours, err := runCLI(t, "", args...)
			if err != nil {
				t.Fatal(err)
			}
			want, got := regexCounts(string(theirs)), regexCounts(ours)
			if want.summary == "" {
				t.Fatalf("no summary line in fail2ban-regex's output:\n%s", theirs)
			}
			if got.summary != want.summary || got.pref != want.pref {
				t.Errorf("mailguard: %q, prefregex %q\nfail2ban-regex: %q, prefregex %q\nours:\n%s\ntheirs:\n%s", got.summary, got.pref, want.summary, want.pref, ours, theirs)
			}
			// fail2ban-regex lists only the regexes that hit.
			for i, n := range got.hits {
				if want.hits[i] != n {
					t.Errorf("failregex %s: mailguard %s hits, fail2ban-regex %q", i, n, want.hits[i])
				}
			}
			for i, n := range want.hits {
				if got.hits[i] != n {
					t.Errorf("failregex %s: fail2ban-regex %s hits, mailguard %q", i, n, got.hits[i])
				}
			}
		})
	}
}

type counts struct {
	summary, pref string
	hits          map[string]string // failregex number -> hits, only those > 0
}

var (
	summaryRE = regexp.MustCompile(`(?m)^Lines: \d+ lines, \d+ ignored, \d+ matched, \d+ missed$`)
	prefRE    = regexp.MustCompile(`(?m)^Prefregex: (\d+) total`)
	hitRE     = regexp.MustCompile(`^\|\s+(\d+)\) \[(\d+)\]`)
)

func regexCounts(out string) counts {
	c := counts{summary: summaryRE.FindString(out), hits: map[string]string{}}
	if m := prefRE.FindStringSubmatch(out); m != nil {
		c.pref = m[1]
	}
	in := false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "Failregex:"):
			in = true
		case strings.HasPrefix(l, "`-"):
			in = false
		case in:
			if m := hitRE.FindStringSubmatch(l); m != nil && m[2] != "0" {
				c.hits[m[1]] = m[2]
			}
		}
	}
	return c
}
