package filter

import (
	"net/netip"
	"strings"
	"testing"
)

// loadMem builds the filter /f/t.conf from files (common.conf from the
// shipped ones is offered as /f/common.conf).
func loadMem(t *testing.T, files map[string]string, mode string) (*Filter, error) {
	t.Helper()
	common, err := shipped.ReadFile("filters/common.conf")
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]string{"/f/common.conf": string(common)}
	for k, v := range files {
		all[k] = v
	}
	return load2(memRead(all), "/f/t.conf", mode, nil)
}

func mustLoad(t *testing.T, text, mode string) *Filter {
	t.Helper()
	f, err := loadMem(t, map[string]string{"/f/t.conf": text}, mode)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestModesAndTags(t *testing.T) {
	const text = `[INCLUDES]
before = common.conf
[Definition]
_daemon = app
prefregex = ^%(__prefix_line)s<F-CONTENT>.+</F-CONTENT>$
mdre-normal = ^bad login from <HOST>$
mdre-extra = %(mdre-normal)s
             ^probe from <ADDR> user <F-USER>\S+</F-USER>$
mdre-sel = ^selected by percent-mode from <IP4>$
failregex = <mdre-<mode>>
ignoreregex = from 10\.
mode = normal
`
	for _, tc := range []struct {
		mode, line string
		want       Outcome
		host, user string
	}{
		{"", "Nov 29 09:18:08 mx app[12]: bad login from 192.0.2.1", Matched, "192.0.2.1", ""},
		{"", "2026-11-29T09:18:08.123456+00:00 mx app[12]: bad login from 2001:db8::1", Matched, "2001:db8::1", ""},
		{"", "Nov 29 09:18:08 mx app[12]: bad login from [::ffff:192.0.2.9]", Matched, "192.0.2.9", ""},
		{"", "Nov 29 09:18:08 mx app[12]: probe from 192.0.2.1 user bob", Missed, "", ""},
		{"extra", "Nov 29 09:18:08 mx app[12]: probe from 192.0.2.1 user bob", Matched, "192.0.2.1", "bob"},
		{"extra", "Nov 29 09:18:08 mx app[12]: bad login from 10.0.0.1", Ignored, "", ""},
		{"sel", "Nov 29 09:18:08 mx app: selected by percent-mode from 192.0.2.3", Matched, "192.0.2.3", ""},
		{"", "Nov 29 09:18:08 mx other[12]: bad login from 192.0.2.1", Missed, "", ""},
	} {
		f := mustLoad(t, text, tc.mode)
		r := f.Examine(tc.line)
		if r.Outcome != tc.want || tc.host != "" && r.Host.String() != tc.host || r.User != tc.user {
			t.Errorf("mode %q: Examine(%q) = %v host %v user %q, want %v host %s user %q",
				tc.mode, tc.line, r.Outcome, r.Host, r.User, tc.want, tc.host, tc.user)
		}
	}
}

// fail2ban 0.10's style: mode names a list through %(...)s, and the
// caller's mode may itself be an interpolation.
func TestPercentModeSelection(t *testing.T) {
	const text = `[Definition]
normal = ^a <ADDR>$
aggressive = %(normal)s
             ^b <ADDR>$
mode = %(normal)s
failregex = %(mode)s
`
	for _, tc := range []struct {
		mode  string
		bLine bool
	}{{"", false}, {"%(aggressive)s", true}} {
		f := mustLoad(t, text, tc.mode)
		if _, ok := f.Match("a 192.0.2.1"); !ok {
			t.Errorf("mode %q: line a missed", tc.mode)
		}
		if _, ok := f.Match("b 192.0.2.1"); ok != tc.bLine {
			t.Errorf("mode %q: line b matched %v, want %v", tc.mode, ok, tc.bLine)
		}
	}
	// Python cannot nest %(...)s inside a name either: a clear error.
	_, err := loadMem(t, map[string]string{"/f/t.conf": "[Definition]\nfailregex = %(re-%(mode)s)s\nmode = a\n"}, "")
	if err == nil || !strings.Contains(err.Error(), `no option "re-%(mode" to interpolate`) {
		t.Errorf("nested interpolation: error %v", err)
	}
}

func TestEngines(t *testing.T) {
	f := mustLoad(t, `[Definition]
failregex = ^plain <ADDR>$
            ^look <ADDR>(?! trusted)
            ^(?P<w>\w+) (?P=w) <ADDR>$
            ^SASL ((?i)login|plain) <ADDR>$
`, "")
	want := []string{EngineRE2, EngineRegexp2, EngineRegexp2, EngineRE2}
	for i, re := range f.Fail {
		if re.Engine() != want[i] {
			t.Errorf("regex %d %q runs on %s, want %s", i+1, re.Source, re.Engine(), want[i])
		}
	}
	for _, tc := range []struct {
		line string
		ok   bool
	}{
		{"plain 192.0.2.1", true},
		{"look 192.0.2.1 untrusted", true},
		{"look 192.0.2.1 trusted", false},
		{"again again 192.0.2.1", true},
		{"again other 192.0.2.1", false},
		{"SASL LOGIN 192.0.2.1", true},
	} {
		if _, ok := f.Match(tc.line); ok != tc.ok {
			t.Errorf("Match(%q) = %v, want %v", tc.line, ok, tc.ok)
		}
	}
}

func TestGroups(t *testing.T) {
	f := mustLoad(t, `[Definition]
failregex = ^fail user=<F-USER>\S*</F-USER> alt=<F-ALT_USER>\S*</F-ALT_USER> from <HOST>$
            ^ok from <ADDR> <F-NOFAIL>accepted</F-NOFAIL>$
            ^id <F-ID/>$
`, "")
	r, ok := f.Match("fail user= alt=carol from 192.0.2.7")
	if !ok || r.User != "carol" || r.Host != netip.MustParseAddr("192.0.2.7") {
		t.Errorf("alt user: %+v %v", r, ok)
	}
	r, ok = f.Match("fail user=dave alt=carol from mail.example.net")
	if ok || r.Outcome != Matched || r.HostName != "mail.example.net" || r.Host.IsValid() {
		t.Errorf("host name: ok %v, %+v; want matched, no address, HostName set", ok, r)
	}
	r, ok = f.Match("ok from 192.0.2.7 accepted")
	if ok || !r.NoFail {
		t.Errorf("F-NOFAIL: ok %v NoFail %v, want false, true", ok, r.NoFail)
	}
	if r := f.Examine("id abc123"); r.ID != "abc123" || r.Outcome != Matched {
		t.Errorf("F-ID: %+v", r)
	}
}

func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"no definition", "[Init]\na = b\n", "no [Definition] section"},
		{"no failregex", "[Definition]\nfailregex =\n", "no failregex"},
		{"bad regex", "[Definition]\nfailregex = ^(<HOST>\n", "failregex line 1: compiling"},
		{"bad maxlines", "[Definition]\nfailregex = ^a <HOST>\n[Init]\nmaxlines = two\n", `maxlines = "two": want a number from 1 to 100`},
		{"huge maxlines", "[Definition]\nfailregex = ^a <HOST>\n[Init]\nmaxlines = 100000\n", "want a number from 1 to 100"},
		{"group twice", "[Definition]\nfailregex = ^a <ADDR> b <ADDR>$\n", "group ip4 defined twice"},
		{"bad datepattern", "[Definition]\nfailregex = ^a <HOST>\ndatepattern = %%Q\n", "unknown directive %Q"},
		{"unknown mode", "[Definition]\nfailregex = <re-<mode>>\nre-a = ^a <ADDR>\nmode = a\n", "no mode \"nope\" (no option re-nope)"},
		{"tag bomb", "[Definition]\na = <b><b><b><b><b><b><b><b>\nb = <c><c><c><c><c><c><c><c>\nc = <d><d><d><d><d><d><d><d>\nd = <e><e><e><e><e><e><e><e>\ne = <f><f><f><f><f><f><f><f>\nf = <g><g><g><g><g><g><g><g>\ng = <h><h><h><h><h><h><h><h>\nh = xxxxxxxxxxxxxxxx\nfailregex = <a>\n", "larger than 1048576 bytes after <tag> substitution"},
		{"interpolation bomb", "[Definition]\na = %(b)s%(b)s%(b)s%(b)s%(b)s%(b)s%(b)s%(b)s\nb = %(c)s%(c)s%(c)s%(c)s%(c)s%(c)s%(c)s%(c)s\nc = %(d)s%(d)s%(d)s%(d)s%(d)s%(d)s%(d)s%(d)s\nd = %(e)s%(e)s%(e)s%(e)s%(e)s%(e)s%(e)s%(e)s\ne = %(f)s%(f)s%(f)s%(f)s%(f)s%(f)s%(f)s%(f)s\nf = %(g)s%(g)s%(g)s%(g)s%(g)s%(g)s%(g)s%(g)s\ng = %(h)s%(h)s%(h)s%(h)s%(h)s%(h)s%(h)s%(h)s\nh = xxxxxxxxxxxxxxxx\nfailregex = %(a)s\n", "larger than 1048576 bytes after interpolation"},
		{"tag loop", "[Definition]\na = <b>\nb = <a>\nfailregex = <a>\n", "did not settle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mode := ""
			if tc.name == "unknown mode" {
				mode = "nope"
			}
			_, err := loadMem(t, map[string]string{"/f/t.conf": tc.text}, mode)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// The literal prefilter: what a line must hold for a regex to be tried,
// lookaround and backreferences left out for regexp2.
func TestPrefilter(t *testing.T) {
	for _, tc := range []struct{ re, want string }{
		{`^(?:reject:|(?:improper command pipelining|too many errors) after \S+) .+$`, `reject:|improper command pipelining|too many errors`},
		{`^from \[<ADDR>\]$`, `from [`},
		{`^(?i)login failed from <ADDR>$`, ``},
		{`^a(?! from )b from <ADDR>$`, `ab from `}, // lookaround is zero-width: "ab" is in every match
		{`^SASL (?=LOGIN) failed(?<!x) for (?P<w>\w+) (?P=w) [(]<ADDR>$`, `SASL  failed for `},
		{`^x? <ADDR>$`, ``},
	} {
		r, err := compile(tc.re, false)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(r.Prefilter(), "|"); got != tc.want {
			t.Errorf("prefilter of %q = %q, want %q", tc.re, got, tc.want)
		}
	}
}
