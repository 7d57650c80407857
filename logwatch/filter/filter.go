// Package filter reads fail2ban filter files (filter.d/*.conf) in
// fail2ban's own syntax and matches log lines against them.
//
// It implements what fail2ban's configparserinc.py, filterreader.py and
// failregex.py do for single-line filters: INI files with [INCLUDES]
// before/after, [DEFAULT], [Definition] and [Init], %(name)s interpolation
// (with %(section/name)s and %(known/name)s), <tag> substitution (<mode>,
// <__prefix_line>, <mdre-<mode>>), the regex tags <HOST>, <ADDR>, <IP4>,
// <IP6>, <DNS>, <F-ID/>, <F-NAME>...</F-NAME> groups, prefregex with
// <F-CONTENT>, failregex and ignoreregex lists, datepattern (see date.go),
// and what filter.py does for multi-line filters: the maxlines buffer with
// <SKIPLINES>, and sessions joined by <F-MLFID> with <F-NOFAIL>,
// <F-MLFFORGET> and <F-MLFGAINED> (see Tracker).
//
// Regexes are Python's. Each compiles with Go's RE2 (regexp) when it can,
// else with github.com/dlclark/regexp2 (lookaround, backreferences), bounded
// by a match timeout; [Regex.Engine] says which.
//
// A Filter is immutable after [Load] and safe for concurrent use; a
// [Tracker] holds the state of one source.
package filter

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dlclark/regexp2/v2"
)

// MaxLineLength is the longest line matched; a longer line is missed
// (Result.TooLong), never cut short: a cut line could match where the
// whole one would not.
const MaxLineLength = 16 << 10

// regexp2Timeout bounds one backtracking match against a crafted line.
const regexp2Timeout = 100 * time.Millisecond

// Engines a Regex can run on.
const (
	EngineRE2     = "re2"
	EngineRegexp2 = "regexp2"
)

// Filter is a loaded fail2ban filter.
type Filter struct {
	Name        string
	Mode        string // the mode it was loaded with ("" when it has none)
	DatePattern string // as written ("" is fail2ban's default detection)
	MaxLines    int    // lines matched together (maxlines, 1 for single-line filters)
	Pref        *Regex // nil without prefregex
	Fail        []*Regex
	Ignore      []*Regex
	dates       *dateDetector
}

// Regex is one compiled regex of a filter.
type Regex struct {
	Source string // after option and <tag> substitution, before the host tags
	Go     string // the pattern given to the engine
	re2    *regexp.Regexp
	re     *regexp2.Regexp
	names  []string // RE2 group names by index
	lits   []string // the literal prefilter: one of them is in every match (nil: none)
}

// Prefilter reports the literals one of which a line must contain for the
// regex to be tried (nil when it has none).
func (r *Regex) Prefilter() []string { return r.lits }

// Engine reports EngineRE2 or EngineRegexp2.
func (r *Regex) Engine() string {
	if r.re2 != nil {
		return EngineRE2
	}
	return EngineRegexp2
}

// parseAddr accepts only a well-formed address (no leading zeros, no zone);
// anything else yields the zero Addr.
func parseAddr(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}
	}
	return a.Unmap()
}

// Load reads the filter file at path (with its includes) and builds it for
// mode ("" takes the filter's own default). Options in opts override the
// filter's [Init] and [Definition] values, as jail.conf's
// filter = name[opt=value] does.
func Load(path string, mode string, opts map[string]string) (*Filter, error) {
	return load2(osRead, path, mode, opts)
}

func load2(read readFunc, path, mode string, opts map[string]string) (*Filter, error) {
	c, err := load(read, path)
	if err != nil {
		return nil, err
	}
	return build(c, strings.TrimSuffix(filepath.Base(path), ".conf"), mode, opts)
}

// tagRE finds <tag> references, innermost first (fail2ban's TAG_CRE).
var tagRE = regexp.MustCompile(`<([^ <>]+)>`)

// maxMaxLines bounds maxlines (fail2ban's filters use at most 10).
const maxMaxLines = 100

// maxTagPasses bounds <tag> substitution (fail2ban's MAX_TAG_REPLACE_COUNT
// is 25).
const maxTagPasses = 25

func build(c *config, name, mode string, opts map[string]string) (*Filter, error) {
	const def = "Definition"
	if c.sections[def] == nil {
		return nil, fmt.Errorf("filter %s: no [Definition] section", name)
	}
	vars := map[string]string{}
	for k, v := range c.sections["Init"] {
		vars[k] = v
	}
	for k, v := range opts {
		vars[strings.ToLower(k)] = v
	}
	if mode != "" {
		vars["mode"] = mode
	}
	// Init and caller options take part in %(name)s only when the
	// Definition has no value of its own... except mode, which selects.
	interp := map[string]string{}
	if m, ok := vars["mode"]; ok {
		interp["mode"] = m
	}
	value := func(opt string) (string, bool, error) {
		if v, ok := vars[opt]; ok {
			s, err := c.interpolate(def, opt, v, interp, 1)
			return s, true, err
		}
		return c.get(def, opt, interp)
	}
	sub := func(opt, s string) (string, error) {
		for range maxTagPasses {
			var ferr error
			out := tagRE.ReplaceAllStringFunc(s, func(t string) string {
				tn := t[1 : len(t)-1]
				if isRegexTag(tn) {
					return t
				}
				var (
					v   string
					ok  bool
					err error
				)
				if sec, o, cut := strings.Cut(tn, "/"); cut && c.sections[sec] != nil {
					var raw string
					raw, ok = c.sections[sec][strings.ToLower(o)]
					if ok {
						v, err = c.interpolate(sec, o, raw, interp, 1)
					}
				} else {
					v, ok, err = value(strings.ToLower(tn))
				}
				if err != nil && ferr == nil {
					ferr = err
				}
				if !ok {
					return t
				}
				return v
			})
			if ferr != nil {
				return "", fmt.Errorf("filter %s: %s: %w", name, opt, ferr)
			}
			if out == s {
				return s, nil
			}
			if len(out) > maxValueSize {
				return "", fmt.Errorf("filter %s: %s: larger than %d bytes after <tag> substitution", name, opt, maxValueSize)
			}
			s = out
		}
		return "", fmt.Errorf("filter %s: %s: <tag> substitution did not settle after %d passes (a loop?)", name, opt, maxTagPasses)
	}
	get := func(opt string) (string, error) {
		v, ok, err := value(opt)
		if err != nil || !ok {
			return "", err
		}
		if v, err = sub(opt, v); err != nil {
			return "", err
		}
		// A mode the filter lacks leaves <mdre-MODE> unresolved; fail2ban
		// would take it as literal text that never matches.
		if m := vars["mode"]; m != "" {
			for _, t := range tagRE.FindAllStringSubmatch(v, -1) {
				if strings.HasSuffix(t[1], "-"+m) {
					return "", fmt.Errorf("filter %s: %s: no mode %q (no option %s)", name, opt, m, t[1])
				}
			}
		}
		return v, nil
	}
	f := &Filter{Name: name}
	if m, err := get("mode"); err == nil {
		f.Mode = m
	}
	f.MaxLines = 1
	if v, err := get("maxlines"); err != nil {
		return nil, err
	} else if v = strings.TrimSpace(v); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxMaxLines {
			return nil, fmt.Errorf("filter %s: maxlines = %q: want a number from 1 to %d", name, v, maxMaxLines)
		}
		f.MaxLines = n
	}
	dp, err := get("datepattern")
	if err != nil {
		return nil, err
	}
	f.DatePattern = strings.TrimSpace(dp)
	if f.dates, err = newDateDetector(f.DatePattern); err != nil {
		return nil, fmt.Errorf("filter %s: %w", name, err)
	}
	multi := f.MaxLines > 1
	pref, err := get("prefregex")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(pref) != "" {
		if f.Pref, err = compile(pref, multi); err != nil {
			return nil, fmt.Errorf("filter %s: prefregex: %w", name, err)
		}
	}
	for _, l := range []struct {
		opt string
		dst *[]*Regex
	}{{"failregex", &f.Fail}, {"ignoreregex", &f.Ignore}} {
		v, err := get(l.opt)
		if err != nil {
			return nil, err
		}
		for i, line := range strings.Split(v, "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			r, err := compile(line, multi)
			if err != nil {
				return nil, fmt.Errorf("filter %s: %s line %d: %w", name, l.opt, i+1, err)
			}
			*l.dst = append(*l.dst, r)
		}
	}
	if len(f.Fail) == 0 {
		return nil, fmt.Errorf("filter %s: no failregex (mode %q)", name, f.Mode)
	}
	return f, nil
}

// isRegexTag reports tags that failregex.py resolves, not the option
// substitution.
func isRegexTag(tn string) bool {
	switch tn {
	case "HOST", "ADDR", "IP4", "IP6", "DNS", "CIDR", "SUBNET", "SKIPLINES":
		return true
	}
	return strings.HasPrefix(tn, "F-") || strings.HasPrefix(tn, "/F-")
}
