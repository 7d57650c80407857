package filter

import (
	"io/fs"
	"strings"
	"testing"
)

// memRead serves files from a map, as the include tests' file system.
func memRead(files map[string]string) readFunc {
	return func(name string) ([]byte, error) {
		s, ok := files[name]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		return []byte(s), nil
	}
}

func TestParseINI(t *testing.T) {
	c, err := parseINI("t.conf", []byte(`# comment
; comment too
[DEFAULT]
base = b

[Definition]
Key = value ; inline comment
semi = a;b
colon: c
multi = first
        second
    # a comment inside the value

        third
empty =
after = x
`))
	if err != nil {
		t.Fatal(err)
	}
	d := c.sections["Definition"]
	for k, want := range map[string]string{
		"key":   "value",
		"semi":  "a;b",
		"colon": "c",
		"multi": "first\nsecond\n\nthird",
		"empty": "",
		"after": "x",
	} {
		if got := d[k]; got != want {
			t.Errorf("option %s = %q, want %q", k, got, want)
		}
	}
	if c.defaults["base"] != "b" {
		t.Errorf("DEFAULT base = %q", c.defaults["base"])
	}
}

func TestParseINIErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"no section", "a = b\n", "t.conf:1: option before the first [section]"},
		{"bad header", "[Definition\n", "t.conf:1: section header without ]"},
		{"not an option", "[Definition]\njunk\n", `t.conf:2: not a section, an option or a comment: "junk"`},
		{"duplicate option", "[Definition]\na = 1\nA = 2\n", `t.conf:3: option "a" twice in one section`},
		{"duplicate section", "[Definition]\n[Definition]\n", "t.conf:2: section [Definition] twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseINI("t.conf", []byte(tc.text))
			if err == nil || err.Error() != tc.want {
				t.Errorf("parseINI(%q) error = %v, want %q", tc.text, err, tc.want)
			}
		})
	}
}

func TestIncludesAndInterpolation(t *testing.T) {
	files := map[string]string{
		"/f/common.conf": "[DEFAULT]\n_daemon = \\S*\nshared = from-common\n[lt_file]\nprefix = P<_daemon>\n",
		"/f/sub/x.conf": `[INCLUDES]
before = ../common.conf
after = x-after.conf
[Definition]
_daemon = xd
failregex = base %(shared)s
pct = 100%%
cross = %(lt_file/prefix)s
`,
		"/f/sub/x-after.conf": "[Definition]\nfailregex = %(known/failregex)s\n            more\n",
		"/f/sub/x.local":      "[Definition]\nlocal = yes\n",
	}
	c, err := load(memRead(files), "/f/sub/x.conf")
	if err != nil {
		t.Fatal(err)
	}
	for opt, want := range map[string]string{
		"failregex": "base from-common\nmore",
		"pct":       "100%",
		"cross":     "P<_daemon>",
		"local":     "yes",
		"_daemon":   "xd",
	} {
		got, ok, err := c.get("Definition", opt, nil)
		if err != nil || !ok || got != want {
			t.Errorf("get(%s) = %q, %v, %v; want %q", opt, got, ok, err, want)
		}
	}
}

func TestInterpolationErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, opt, want string }{
		{"loop", "[Definition]\na = %(b)s\nb = %(a)s\n", "a", "interpolation deeper than 10"},
		{"missing", "[Definition]\na = %(nope)s\n", "a", `no option "nope" to interpolate`},
		{"lone percent", "[Definition]\na = 5%\n", "a", "'%' must be followed by '%' or '('"},
		{"unterminated", "[Definition]\na = %(b\n", "a", "bad interpolation syntax"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseINI("t.conf", []byte(tc.text))
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = c.get("Definition", tc.opt, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("get(%s) error = %v, want it to contain %q", tc.opt, err, tc.want)
			}
		})
	}
}

func TestIncludeErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"cycle", map[string]string{"/a.conf": "[INCLUDES]\nbefore = b.conf\n", "/b.conf": "[INCLUDES]\nbefore = a.conf\n"}, "/a.conf: includes itself"},
		{"missing main", map[string]string{}, "open /a.conf: file does not exist"},
		{"broken include", map[string]string{"/a.conf": "[INCLUDES]\nbefore = b.conf\n[Definition]\n", "/b.conf": "junk\n"}, "/b.conf:1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(memRead(tc.files), "/a.conf")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("load error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
