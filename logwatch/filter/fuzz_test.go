package filter

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// FuzzParse feeds arbitrary filter files through the whole loader (INI,
// includes of common.conf, interpolation, tags, regex translation) and the
// matcher: nothing may panic or hang, and what parses must parse again to
// the same sections when written back out.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("filters/*.conf")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("[Definition]\nfailregex = ^(?P<x>a)(?P=x) <HOST>(?=b)\nignoreregex = <F-USER>.*</F-USER>\n")
	f.Add("[Definition]\nprefregex = ^<F-MLFID>\\S+</F-MLFID> <F-CONTENT>.+</F-CONTENT>$\nfailregex = ^<F-NOFAIL>c</F-NOFAIL> <ADDR>$\n  ^x<SKIPLINES>^<F-MLFFORGET>y</F-MLFFORGET>\ndatepattern = ^%%Y-%%m-%%d %%H:%%M:%%S\n  EPOCH\n[Init]\nmaxlines = 3\n")
	f.Add("[INCLUDES]\nbefore = common.conf t.conf\n[Definition]\na = %(b)s\nb = <a>\nfailregex = <a>\n")
	common, err := shipped.ReadFile("filters/common.conf")
	if err != nil {
		f.Fatal(err)
	}
	lines := []string{
		"Nov 29 09:25:40 mx postfix/submission/smtpd[1]: warning: unknown[127.0.0.15]: SASL PLAIN authentication failed: x",
		"Nov 29 09:25:52 imap-login: Info: Disconnected (auth failed, 1 attempts): user=<a>, rip=::1, lip=::1",
		"\xff\xfe<HOST>[1.2.3.4]",
	}
	f.Fuzz(func(t *testing.T, text string) {
		if c, err := parseINI("t.conf", []byte(text)); err == nil {
			again, err := parseINI("again.conf", []byte(writeINI(c)))
			if err != nil {
				t.Fatalf("written back out, %q does not parse: %v\n%s", text, err, writeINI(c))
			}
			if !reflect.DeepEqual(c, again) {
				t.Fatalf("round trip of %q:\n%#v\nbecame\n%#v", text, c, again)
			}
		}
		flt, err := load2(memRead(map[string]string{"/f/t.conf": text, "/f/common.conf": string(common)}), "/f/t.conf", "", nil)
		if err != nil {
			return
		}
		tr := flt.NewTracker()
		now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
		for _, l := range lines {
			flt.Match(l)
			tr.Line(l, now)
			tr.Line(text, now) // the text as a line too: dates, sessions
		}
	})
}

// writeINI writes c in the syntax parseINI reads.
func writeINI(c *config) string {
	var b strings.Builder
	section := func(name string, opts map[string]string) {
		b.WriteString("[" + name + "]\n")
		keys := make([]string, 0, len(opts))
		for k := range opts {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			b.WriteString(k + " =" + strings.ReplaceAll(opts[k], "\n", "\n\t") + "\n")
		}
	}
	section("DEFAULT", c.defaults)
	names := make([]string, 0, len(c.sections))
	for n := range c.sections {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		section(n, c.sections[n])
	}
	return b.String()
}
