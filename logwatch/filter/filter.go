// Package filter reads fail2ban filter files (filter.d/*.conf) in
// fail2ban's own syntax and matches log lines against them.
//
// It implements what fail2ban's configparserinc.py, filterreader.py and
// failregex.py do for single-line filters: INI files with [INCLUDES]
// before/after, [DEFAULT], [Definition] and [Init], %(name)s interpolation
// (with %(section/name)s and %(known/name)s), <tag> substitution (<mode>,
// <__prefix_line>, <mdre-<mode>>), the regex tags <HOST>, <ADDR>, <IP4>,
// <IP6>, <DNS>, <F-ID/>, <F-NAME>...</F-NAME> groups, prefregex with
// <F-CONTENT>, failregex and ignoreregex lists. Multi-line filters
// (maxlines > 1, <F-MLFID>, <SKIPLINES>) are refused with an error.
//
// Regexes are Python's. Each compiles with Go's RE2 (regexp) when it can,
// else with github.com/dlclark/regexp2 (lookaround, backreferences), bounded
// by a match timeout; [Regex.Engine] says which.
//
// A Filter is immutable after [Load] and safe for concurrent use.
package filter

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"sort"
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
	DatePattern string // as written; only {^LN-BEG} (syslog and ISO 8601 dates at line start) is honoured
	Pref        *Regex // nil without prefregex
	Fail        []*Regex
	Ignore      []*Regex
}

// Regex is one compiled regex of a filter.
type Regex struct {
	Source string // after option and <tag> substitution, before the host tags
	Go     string // the pattern given to the engine
	re2    *regexp.Regexp
	re     *regexp2.Regexp
}

// Engine reports EngineRE2 or EngineRegexp2.
func (r *Regex) Engine() string {
	if r.re2 != nil {
		return EngineRE2
	}
	return EngineRegexp2
}

// find returns the named groups of the first match in s (a group that did
// not take part is absent), or nil.
func (r *Regex) find(s string) map[string]string {
	if r.re2 != nil {
		m := r.re2.FindStringSubmatchIndex(s)
		if m == nil {
			return nil
		}
		g := map[string]string{}
		for i, n := range r.re2.SubexpNames() {
			if n != "" && m[2*i] >= 0 {
				if _, set := g[n]; !set || g[n] == "" {
					g[n] = s[m[2*i]:m[2*i+1]]
				}
			}
		}
		return g
	}
	m, err := r.re.FindStringMatch(s)
	if err != nil || m == nil { // a timeout is a miss
		return nil
	}
	g := map[string]string{}
	for _, grp := range m.Groups() {
		if grp.Name != "" && (grp.Name[0] < '0' || grp.Name[0] > '9') && len(grp.Captures) > 0 {
			g[grp.Name] = grp.String()
		}
	}
	return g
}

// Outcome is what a line did to a filter, in fail2ban-regex's words.
type Outcome int

// Outcomes.
const (
	Missed Outcome = iota
	Ignored
	Matched
)

// Result is what a matched line says.
type Result struct {
	Outcome  Outcome
	Regex    int        // index into Fail of the regex that matched, -1 if none
	Host     netip.Addr // the client address; zero when the regex took a host name (<HOST> as DNS) or no address
	HostName string     // <HOST> when it matched a name, not an address; never resolved
	User     string     // <F-USER>, else the first <F-ALT_USER...>
	ID       string     // <F-ID>
	NoFail   bool       // the regex marks this line <F-NOFAIL>: not a failure
	TooLong  bool       // the line exceeded MaxLineLength and was not matched
	Groups   map[string]string
}

// Match examines line (without its trailing newline). ok is true when a
// failregex matched, no ignoreregex did, the line is not <F-NOFAIL> and
// it named a valid client address in Result.Host.
func (f *Filter) Match(line string) (Result, bool) {
	r := f.Examine(line)
	return r, r.Outcome == Matched && !r.NoFail && r.Host.IsValid()
}

// Examine examines line as fail2ban does: the date at line start is cut
// off, prefregex must match and its <F-CONTENT> is what the failregexes
// see, the first matching failregex wins unless an ignoreregex matches the
// same text.
func (f *Filter) Examine(line string) Result {
	res := Result{Regex: -1}
	if len(line) > MaxLineLength {
		res.TooLong = true
		return res
	}
	buf := stripDate(line)
	groups := map[string]string{}
	if f.Pref != nil {
		g := f.Pref.find(buf)
		if g == nil {
			return res
		}
		content, ok := g["content"]
		delete(g, "content")
		if ok && content != "" {
			buf = content
		}
		groups = g
	}
	for i, re := range f.Fail {
		g := re.find(buf)
		if g == nil {
			continue
		}
		for _, ig := range f.Ignore {
			if ig.find(buf) != nil {
				res.Outcome = Ignored
				res.Regex = i
				return res
			}
		}
		for k, v := range g {
			if _, set := groups[k]; !set || v != "" {
				groups[k] = v
			}
		}
		res.Outcome, res.Regex, res.Groups = Matched, i, groups
		res.fill()
		return res
	}
	return res
}

func (res *Result) fill() {
	g := res.Groups
	if v, ok := g["ip4"]; ok {
		res.Host = parseAddr(v)
	} else if v, ok := g["ip6"]; ok {
		res.Host = parseAddr(v)
	} else if v, ok := g["dns"]; ok {
		res.HostName = v
	}
	res.ID = g["fid"]
	res.User = g["user"]
	if res.User == "" {
		var alts []string
		for k := range g {
			if strings.HasPrefix(k, "alt_user") {
				alts = append(alts, k)
			}
		}
		sort.Strings(alts)
		for _, k := range alts {
			if g[k] != "" {
				res.User = g[k]
				break
			}
		}
	}
	_, res.NoFail = g["nofail"]
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
	if v, err := get("maxlines"); err != nil {
		return nil, err
	} else if v = strings.TrimSpace(v); v != "" && v != "1" {
		return nil, fmt.Errorf("filter %s: maxlines = %s: multi-line filters are not supported yet", name, v)
	}
	dp, err := get("datepattern")
	if err != nil {
		return nil, err
	}
	f.DatePattern = strings.TrimSpace(dp)
	pref, err := get("prefregex")
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(pref) != "" {
		if f.Pref, err = compile(pref); err != nil {
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
			r, err := compile(line)
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
