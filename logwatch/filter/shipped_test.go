package filter

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// The shipped filters against the lines recorded from real Postfix and
// Dovecot: every matched line with the address and user taken from it,
// and fail2ban-regex's counts, compared with a golden file.
func TestShippedAgainstRecordedLogs(t *testing.T) {
	for _, tc := range []struct{ log, filter, mode string }{
		{"postfix.log", "postfix", ""},
		{"postfix.log", "postfix", "aggressive"},
		{"postfix.log", "postfix", "auth"},
		{"postfix.log", "postfix", "errors"},
		{"postfix.log", "postfix", "rbl"},
		{"postfix.log", "postfix-sasl", ""},
		{"dovecot.log", "dovecot", ""},
		{"dovecot.log", "dovecot", "aggressive"},
		{"postscreen.log", "postscreen", ""},
		{"postscreen.log", "postfix", "ddos"},
		{"roundcube.log", "roundcube-auth", ""},
	} {
		name := tc.filter
		if tc.log == "postscreen.log" && tc.filter == "postfix" {
			name += "-postscreen"
		}
		if tc.mode != "" {
			name += "-" + tc.mode
		}
		t.Run(name, func(t *testing.T) {
			f, err := LoadShipped(tc.filter, tc.mode, nil)
			if err != nil {
				t.Fatal(err)
			}
			got := runLog(t, f, filepath.Join("testdata", tc.log))
			golden := filepath.Join("testdata", name+".golden")
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
				t.Errorf("%s over %s:\n%s\nwant:\n%s", name, tc.log, got, want)
			}
		})
	}
}

func runLog(t *testing.T, f *Filter, path string) string {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var b strings.Builder
	var n, ign, match, miss int
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		n++
		r, ok := f.Match(sc.Text())
		switch r.Outcome {
		case Matched:
			match++
			fmt.Fprintf(&b, "line %d: regex %d host %v user %q ok %v\n", n, r.Regex+1, r.Host, r.User, ok)
		case Ignored:
			ign++
		default:
			miss++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "Lines: %d lines, %d ignored, %d matched, %d missed\n", n, ign, match, miss)
	return b.String()
}

func TestShippedList(t *testing.T) {
	got := strings.Join(Shipped(), " ")
	if want := "dovecot postfix postfix-sasl postscreen roundcube-auth"; got != want {
		t.Errorf("Shipped() = %q, want %q", got, want)
	}
	if _, err := LoadShipped("../filters/postfix", "", nil); err == nil {
		t.Errorf("LoadShipped with a path: no error")
	}
	if _, err := Open("nonesuch", "", nil); err == nil {
		t.Errorf("Open(nonesuch): no error")
	}
}
