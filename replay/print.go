package replay

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/mailguard/mailguard/internal/escape"
)

// Print writes res for people: one line per differing ban ("+" only the
// replay, "-" only the recorded run), a line per jail, the users refused
// from known devices and the bad lines. Subjects and logins are
// attacker-chosen text and are escaped.
func Print(w io.Writer, res *Result) error {
	pw := &errWriter{w: w}
	for _, b := range res.Added {
		pw.printf("+ %s %s\n", escape.String(b.Subject), banLine(b))
	}
	for _, b := range res.Removed {
		pw.printf("- %s %s\n", escape.String(b.Subject), banLine(b))
	}
	if len(res.Added)+len(res.Removed) == 0 {
		pw.printf("no difference in bans\n")
	}
	pw.printf("\nreplayed %d events (%d failures) from %s to %s: %d refused, %d recorded refusals let through\n",
		res.Events, res.Failures, stamp(res.From), stamp(res.To), res.Refused, res.LetThrough)
	for _, kind := range slices.Sorted(maps.Keys(res.NotReplayed)) {
		pw.printf("not replayed: %d %s\n", res.NotReplayed[kind], escape.String(kind))
	}
	for _, s := range res.Jails {
		pw.printf("jail %s: %d failures counted, bans recorded %d, replayed %d (+%d -%d)\n",
			escape.String(s.Jail), s.Failures, s.Recorded, s.Replayed, s.Added, s.Removed)
	}
	if len(res.Known) > 0 {
		pw.printf("\n!!! USERS REFUSED FROM THEIR KNOWN DEVICES: %d: the new config locks users out\n", len(res.Known))
		for _, k := range res.Known {
			pw.printf("!!! %s %s from %s refused by %s (jail %s) ref %s\n", stamp(k.Time), escape.String(k.User),
				escape.String(k.Addr), escape.String(k.Subject), escape.String(k.Jail), escape.String(k.ID))
		}
	} else {
		pw.printf("no user refused from a known device\n")
	}
	if len(res.Bad) > 0 {
		pw.printf("\n%d bad lines skipped:\n", len(res.Bad))
		for _, e := range res.Bad {
			pw.printf("%s\n", escape.String(e.Error()))
		}
	}
	return pw.err
}

func banLine(b Ban) string {
	s := fmt.Sprintf("%s %s bantime=%s", escape.String(b.Jail), stamp(b.Time), b.BanTime)
	if b.Nth > 1 {
		s += fmt.Sprintf(" nth=%d", b.Nth)
	}
	if b.Addr != "" {
		s += " addr=" + escape.String(b.Addr)
	}
	if b.Protocol != "" {
		s += " protocol=" + escape.String(b.Protocol)
	}
	if b.ID != "" {
		s += " ref=" + escape.String(b.ID)
	}
	return s
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}
