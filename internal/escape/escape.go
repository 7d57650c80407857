// Package escape makes attacker-chosen text (logins, reasons, anything a
// client sent) safe to print for people: no control character, escape
// sequence or bidirectional override reaches a terminal or a text log, and a
// newline cannot forge a line of output.
package escape

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String returns s with every control character (C0, DEL, C1), every
// bidirectional formatting character and every invalid UTF-8 byte written
// as a Go escape (\n, \t, \x1b, \u202e). Other text, backslashes included,
// is unchanged, so ordinary logins print as they are.
func String(s string) string {
	if !needed(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80 && unsafe(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafe(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
		i += size
	}
	return b.String()
}

// Lines escapes each line of s and keeps the newlines between them: for
// messages that are several lines by design (a list of config errors).
func Lines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = String(l)
	}
	return strings.Join(lines, "\n")
}

func needed(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || unsafe(r) {
			return true
		}
	}
	return false
}

// unsafe: control characters and the bidi formatting characters that
// reorder what a terminal shows (U+061C, U+200E-F, U+202A-E, U+2066-9).
func unsafe(r rune) bool {
	return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)
}
