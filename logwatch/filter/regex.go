package filter

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/dlclark/regexp2/v2"
)

// The host tags of failregex.py. IPv6 differs: fail2ban ends it with a
// lookbehind (?<=:): that RE2 lacks; the Go form accepts a superset and
// the address is then validated by netip.ParseAddr.
const (
	reIP4  = `(?:\d{1,3}\.){3}\d{1,3}`
	reIP6  = `(?:[0-9a-fA-F]{1,4}::?|:){1,7}(?:[0-9a-fA-F]{1,4}|:)`
	reDNS  = `(?P<dns>[\w\-.^_]*\w)`
	reAddr = `\[?(?:(?:::f{4,6}:)?(?P<ip4>` + reIP4 + `)|(?P<ip6>` + reIP6 + `))\]?`
	reHost = `(?:` + reAddr + `|` + reDNS + `)`
)

var hostTags = map[string]string{
	"HOST":    reHost,
	"ADDR":    reAddr,
	"F-ADDR/": reAddr,
	"IP4":     `(?:::f{4,6}:)?(?P<ip4>` + reIP4 + `)`,
	"F-IP4/":  `(?:::f{4,6}:)?(?P<ip4>` + reIP4 + `)`,
	"IP6":     `(?P<ip6>` + reIP6 + `)`,
	"F-IP6/":  `(?P<ip6>` + reIP6 + `)`,
	"DNS":     reDNS,
	"F-DNS/":  reDNS,
	"CIDR":    `(?P<cidr>\d+)`,
	"F-CIDR/": `(?P<cidr>\d+)`,
	"SUBNET":  `\[?(?:(?:::f{4,6}:)?(?P<ip4>` + reIP4 + `)|(?P<ip6>` + reIP6 + `))(?:/(?P<cidr>\d+))?\]?`,
	"F-ID/":   `(?P<fid>\S+)`,
	"F-PORT/": `(?P<fport>\w+)`,
}

// ftagRE is failregex.py's FTAG_CRE.
var ftagRE = regexp.MustCompile(`</?[\w\-]+/?>`)

var fnameRE = regexp.MustCompile(`^(/?)F-([A-Z0-9_\-]+)$`)

// globFlagRE finds a group opening with global flags, "((?i)" or
// "(?:(?i)", which Python 3.11 refuses and fail2ban rewrites to "(?i:".
var globFlagRE = regexp.MustCompile(`\((?:\?:)?(\(\?[a-z]+)\)`)

// resolveTags turns fail2ban's regex tags into named groups.
func resolveTags(s string) (string, error) {
	open := map[string]bool{}
	skip := 0
	out := ftagRE.ReplaceAllStringFunc(s, func(t string) string {
		tn := t[1 : len(t)-1]
		if tn == "SKIPLINES" {
			skip++
			return fmt.Sprintf(`\n(?P<skiplines%d>(?:(?:.*\n)*?))`, skip-1)
		}
		if v, ok := hostTags[tn]; ok {
			return v
		}
		m := fnameRE.FindStringSubmatch(tn)
		if m == nil {
			return t
		}
		n := m[2]
		if m[1] == "/" {
			if open[n] {
				return ")"
			}
			return t
		}
		open[n] = true
		g := strings.ToLower(n)
		switch g {
		case "id":
			g = "fid"
		case "port":
			g = "fport"
		}
		return "(?P<" + strings.ReplaceAll(g, "-", "_") + ">"
	})
	return out, nil
}

// globToLocal rewrites "((?i)" to "(?i:" unless the "(" is escaped.
func globToLocal(s string) string {
	var b strings.Builder
	last := 0
	for _, m := range globFlagRE.FindAllStringSubmatchIndex(s, -1) {
		if m[0] > 0 && s[m[0]-1] == '\\' {
			continue
		}
		b.WriteString(s[last:m[0]])
		b.WriteString(s[m[2]:m[3]])
		b.WriteString(":")
		last = m[1]
	}
	b.WriteString(s[last:])
	return b.String()
}

// pyBackrefRE finds Python's named backreference (?P=name).
var pyBackrefRE = regexp.MustCompile(`\(\?P=(\w+)\)`)

// compile builds a Regex from a Python regex with fail2ban tags; multiline
// is Python's re.MULTILINE, which fail2ban sets when maxlines > 1.
func compile(src string, multiline bool) (*Regex, error) {
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("empty regex")
	}
	p, err := resolveTags(src)
	if err != nil {
		return nil, err
	}
	p = globToLocal(p)
	if multiline {
		p = "(?m)" + p
	}
	r := &Regex{Source: src, Go: p}
	if n := dupGroup(p); n != "" {
		return nil, fmt.Errorf("compiling %q: group %s defined twice (Python, and so fail2ban, refuses it)", src, n)
	}
	if re, err := regexp.Compile(p); err == nil {
		r.re2, r.names, r.lits = re, re.SubexpNames(), requiredLits(p)
		return r, nil
	}
	p2 := pyBackrefRE.ReplaceAllString(dotNetNames(p), `\k<$1>`)
	re, err := regexp2.Compile(p2, regexp2.None)
	if err != nil {
		return nil, fmt.Errorf("compiling %q: %w", src, err)
	}
	re.MatchTimeout = regexp2Timeout
	r.Go, r.re, r.lits = p2, re, requiredLits(withoutLookaround(p2))
	return r, nil
}

func osRead(name string) ([]byte, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxFileSize)
	}
	return os.ReadFile(name)
}

var groupNameRE = regexp.MustCompile(`\(\?P?<([A-Za-z_]\w*)>`)

// dupGroup returns a group name defined twice in p, or "".
func dupGroup(p string) string {
	seen := map[string]bool{}
	for _, m := range groupNameRE.FindAllStringSubmatchIndex(p, -1) {
		if m[0] > 0 && p[m[0]-1] == '\\' {
			continue
		}
		n := p[m[2]:m[3]]
		if seen[n] {
			return n
		}
		seen[n] = true
	}
	return ""
}

// dotNetNames rewrites Python's (?P<name> to regexp2's (?<name>, leaving
// an escaped "\(" alone.
func dotNetNames(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '\\' && i+1 < len(p) {
			b.WriteString(p[i : i+2])
			i++
			continue
		}
		if strings.HasPrefix(p[i:], "(?P<") {
			b.WriteString("(?<")
			i += 3
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}
