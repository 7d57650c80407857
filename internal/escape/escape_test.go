package escape

import (
	"testing"
	"unicode"
)

func TestString(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain login", "alice@example.org", "alice@example.org"},
		{"utf-8 and backslash", "jürgen\\büro@example.de", "jürgen\\büro@example.de"},
		{"escape sequence", "\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"forged line", "x\n`- Banned IP list:\t1.2.3.4", "x\\n`- Banned IP list:\\t1.2.3.4"},
		{"carriage return", "a\rb", `a\rb`},
		{"nul and del", "a\x00b\x7f", `a\x00b\x7f`},
		{"c1 control", "a\u009bb", `a\u009bb`},
		{"bidi override", "abc\u202egpj.exe", `abc\u202egpj.exe`},
		{"invalid utf-8", "a\xffb", `a\xffb`},
	} {
		if got := String(tc.in); got != tc.want {
			t.Errorf("%s: String(%q) = %q, want %q", tc.name, tc.in, got, tc.want)
		}
	}
	if got, want := Lines("a\x1b\nb"), "a\\x1b\nb"; got != want {
		t.Errorf("Lines = %q, want %q", got, want)
	}
}

// FuzzString checks the property the package promises: nothing unsafe left.
func FuzzString(f *testing.F) {
	f.Add("\x1b]0;title\x07\n\u202e\xff")
	f.Fuzz(func(t *testing.T, s string) {
		for _, r := range String(s) {
			if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == 0xFFFD && !containsRuneError(s) {
				t.Fatalf("String(%q) = %q keeps %U", s, String(s), r)
			}
		}
	})
}

func containsRuneError(s string) bool {
	for _, r := range s {
		if r == 0xFFFD {
			return true
		}
	}
	return false
}
