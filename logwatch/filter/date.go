package filter

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Date detection as fail2ban's datedetector.py does it: a filter's
// datepattern names the templates tried on each line; the first date found
// is the event time and is cut out of the line before the regexes see it
// (the text before it stays: "[29-Nov-2026 09:18:08 +0000]: x" leaves
// "[]: x", as in fail2ban).
//
//   - no datepattern: fail2ban's default templates, first at the start of
//     the line, then anywhere in it;
//   - {^LN-BEG} (common.conf's value): the default templates at the start
//     of the line only (after at most two non-word characters);
//   - {DEFAULT}: the default templates anywhere;
//   - {NONE}: lines carry no date (the time they are read is used);
//   - EPOCH, LEPOCH (milliseconds), TAI64N, each optionally after {^LN-BEG}
//     or ^;
//   - a regex with strptime directives (%Y %y %m %d %e %H %k %I %l %M %S
//     %f %b %B %a %A %p %z %Z %j, the %Ex* forms, %%), optionally after
//     {^LN-BEG}, ^ or {UNB} (no word boundaries); several patterns, one
//     per line, are tried in order.

const (
	kindStrptime = iota
	kindEpoch
	kindLEpoch
	kindTAI64N
)

// dateTemplate is one compiled date format; group "date" spans the date.
type dateTemplate struct {
	name     string
	re       *regexp.Regexp
	kind     int
	anchored bool // only at line start
	wordEnd  bool // the date must not end inside a word
	idx      map[string]int
}

// dateDetector finds the date of a line.
type dateDetector struct {
	none      bool
	syslogISO bool // the fast path for syslog and ISO 8601 dates at line start applies first
	anchored  []*dateTemplate
	search    []*dateTemplate
}

// fail2ban's DEFAULT_TEMPLATES (datedetector.py), in its order, minus the
// ones no mail log writes (Tomcat, ASSP, monit's zone prefix); RE2 has no
// backreferences, so a separator may differ between its two places.
var defaultTemplates = []string{
	`%ExY[-/.]%m[-/.]%d(?:T|  ?)%H:%M:%S(?:[.,]%f)?(?:\s*%z)?`,
	`(?:%a )?%b %d %k:%M:%S(?:\.%f)?(?: %ExY)?`,
	`(?:%a )?%b %d %ExY %k:%M:%S(?:\.%f)?`,
	`%d[-/]%m[-/](?:%ExY|%Exy) %k:%M:%S`,
	`%d[-/]%b[-/]%ExY[ :]?%H:%M:%S(?:\.%f)?(?: %z)?`,
	`%m/%d/%ExY:%H:%M:%S`,
	`%m-%d-%ExY %k:%M:%S(?:\.%f)?`,
	`EPOCH`,
	`{^LN-BEG}%H:%M:%S`,
	`%Exy%Exm%Exd  ?%H:%M:%S`,
	`%ExY%Exm%Exd(?:T|  ?)%ExH%ExM%ExS(?:[.,]%f)?(?:\s*%z)?`,
	`TAI64N`,
}

var strptimeRE = map[string]string{
	"a":   `(?P<a>[A-Za-z]{3,9})`,
	"A":   `(?P<a>[A-Za-z]{3,9})`,
	"b":   `(?P<b>Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:tember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)`,
	"d":   `(?P<d>[1-2]\d|[0 ]?[1-9]|3[0-1])`,
	"e":   `(?P<d>[1-2]\d|[0 ]?[1-9]|3[0-1])`,
	"m":   `(?P<m>0?[1-9]|1[0-2])`,
	"Y":   `(?P<Y>\d{4})`,
	"y":   `(?P<y>\d{2})`,
	"H":   `(?P<H>[0-1]?\d|2[0-3])`,
	"k":   ` ?(?P<H>[0-2]?\d)`,
	"I":   `(?P<I>1[0-2]|0?[1-9])`,
	"l":   ` ?(?P<I>1?\d)`,
	"M":   `(?P<M>[0-5]?\d)`,
	"S":   `(?P<S>[0-5]?\d|6[0-1])`,
	"f":   `(?P<f>\d+)`,
	"p":   `(?P<p>AM|PM|am|pm)`,
	"z":   `(?P<z>Z|UTC|GMT|[+-][01]\d(?::?\d{2})?)`,
	"Z":   `(?P<Z>Z|[A-Z]{3,5})`,
	"j":   `(?P<j>36[0-6]|3[0-5]\d|[12]\d\d|0?[1-9]\d|0?0?[1-9])`,
	"ExY": `(?P<Y>19\d\d|20\d\d)`,
	"Exy": `(?P<y>\d{2})`,
	"Exd": `(?P<d>[1-2]\d|0[1-9]|3[0-1])`,
	"Exm": `(?P<m>0[1-9]|1[0-2])`,
	"ExH": `(?P<H>[0-1]\d|2[0-3])`,
	"Exk": ` ?(?P<H>[0-1]?\d|2[0-3])`,
	"Exl": ` ?(?P<I>1[0-2]|\d)`,
	"ExM": `(?P<M>[0-5]\d)`,
	"ExS": `(?P<S>[0-5]\d|6[0-1])`,
	"%":   `%`,
}

var directiveRE = regexp.MustCompile(`%(Ex[a-zA-Z]|[a-zA-Z%])`)

// newDateDetector builds the detector for a datepattern value.
func newDateDetector(pattern string) (*dateDetector, error) {
	d := &dateDetector{}
	pattern = strings.TrimSpace(pattern)
	if pattern == "" {
		return d, d.addDefaults(false)
	}
	for _, p := range strings.Split(pattern, "\n") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		key := p
		if !strings.Contains(p, "%") {
			key = strings.ToUpper(p)
		}
		switch key {
		case "{^LN-BEG}":
			if err := d.addDefaults(true); err != nil {
				return nil, err
			}
			continue
		case "{DEFAULT}":
			if err := d.addDefaults(false); err != nil {
				return nil, err
			}
			continue
		case "{NONE}":
			d.none = true
			continue
		}
		t, err := compileDate(p, false)
		if err != nil {
			return nil, fmt.Errorf("datepattern %q: %w", p, err)
		}
		d.add(t)
	}
	return d, nil
}

func (d *dateDetector) add(t *dateTemplate) {
	if t.anchored {
		d.anchored = append(d.anchored, t)
	} else {
		d.search = append(d.search, t)
	}
}

// addDefaults adds fail2ban's default templates: each at line start and,
// unless onlyStart, anywhere in the line.
func (d *dateDetector) addDefaults(onlyStart bool) error {
	if len(d.anchored) == 0 {
		d.syslogISO = true
	}
	for _, p := range defaultTemplates {
		t, err := compileDate(p, true)
		if err != nil {
			return err
		}
		d.add(t)
		if !onlyStart {
			u, err := compileDate(p, false)
			if err != nil {
				return err
			}
			if !u.anchored {
				d.add(u)
			}
		}
	}
	return nil
}

// compileDate builds one template; start anchors a pattern that is not
// anchored by itself at the line start (the {^LN-BEG} copy).
func compileDate(p string, start bool) (*dateTemplate, error) {
	t := &dateTemplate{name: p, wordEnd: true}
	wordBegin := true
	if strings.HasPrefix(p, "{UNB}") {
		p = p[len("{UNB}"):]
		wordBegin, t.wordEnd = false, false
	}
	if strings.HasPrefix(p, "{^LN-BEG}") {
		p = p[len("{^LN-BEG}"):]
		start = true
	}
	if strings.HasPrefix(p, "^") {
		p = p[1:]
		start = true
	}
	var body string
	switch strings.ToUpper(p) {
	case "EPOCH":
		t.kind, body = kindEpoch, `\d{10,11}(?:\.\d{3,6})?`
		start = true // fail2ban: at line start or after "[" there
	case "LEPOCH":
		t.kind, body = kindLEpoch, `\d{10,11}(?:\d{3}(?:\.\d{1,6}|\d{3})?)?`
		start = true
	case "TAI64N":
		t.kind, body = kindTAI64N, `@[0-9a-f]{24}`
	default:
		var bad error
		body = directiveRE.ReplaceAllStringFunc(p, func(m string) string {
			if r, ok := strptimeRE[m[1:]]; ok {
				return r
			}
			bad = fmt.Errorf("unknown directive %s", m)
			return m
		})
		if bad != nil {
			return nil, bad
		}
	}
	var pre string
	switch {
	case start:
		t.anchored = true
		pre = `^\W{0,2}`
	case wordBegin:
		pre = `(?:^|\b|\W)`
	}
	post := ""
	if t.wordEnd && endsInWord(p) {
		// fail2ban's (?=\b|\W|$) after a date that ends in a word
		// character is \b, which RE2 has; other dates are checked after
		// the match.
		post, t.wordEnd = `\b`, false
	}
	re, err := regexp.Compile(pre + `(?P<date>` + body + `)` + post)
	if err != nil {
		return nil, err
	}
	t.re = re
	t.idx = map[string]int{}
	for i, n := range re.SubexpNames() {
		if n != "" {
			if _, dup := t.idx[n]; !dup {
				t.idx[n] = i
			}
		}
	}
	return t, nil
}

// find returns where the date is in line (start, end) and its time; ok is
// false when the line has none.
func (d *dateDetector) find(line string, now time.Time, loc *time.Location) (s, e int, t time.Time, ok bool) {
	if d.none {
		return 0, 0, time.Time{}, false
	}
	if d.syslogISO {
		if s, e, t, ok = fastDate(line, now, loc); ok {
			return s, e, t, ok
		}
	}
	for _, tp := range d.anchored {
		if s, e, t, ok = tp.match(line, now, loc); ok {
			return
		}
	}
	best := -1
	for _, tp := range d.search {
		if s2, e2, t2, ok2 := tp.match(line, now, loc); ok2 && (best < 0 || s2 < s) {
			s, e, t, best = s2, e2, t2, 1
		}
	}
	return s, e, t, best > 0
}

// endsInWord reports a pattern whose match ends in a word character (a
// directive, a group or a letter; not an escaped punctuation).
func endsInWord(p string) bool {
	switch {
	case p == "":
		return false
	case strings.HasSuffix(p, `\]`) || strings.HasSuffix(p, `\)`):
		return false
	}
	c := p[len(p)-1]
	return isWordByte(c) || c == ')' || c == '?' || c == '}' || c == '*' || c == '+'
}

func isWordByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func (tp *dateTemplate) match(line string, now time.Time, loc *time.Location) (s, e int, t time.Time, ok bool) {
	rest := 0
	for rest <= len(line) {
		m := tp.re.FindStringSubmatchIndex(line[rest:])
		if m == nil {
			return 0, 0, time.Time{}, false
		}
		gi := tp.idx["date"]
		s, e = rest+m[2*gi], rest+m[2*gi+1]
		if tp.wordEnd && e < len(line) && e > s && isWordByte(line[e-1]) && isWordByte(line[e]) {
			if tp.anchored {
				return 0, 0, time.Time{}, false
			}
			rest = s + 1
			continue
		}
		if t, ok = tp.parse(line[rest:], m, now, loc); ok {
			return s, e, t, true
		}
		if tp.anchored {
			return 0, 0, time.Time{}, false
		}
		rest = s + 1
	}
	return 0, 0, time.Time{}, false
}

func (tp *dateTemplate) group(s string, m []int, name string) string {
	i, ok := tp.idx[name]
	if !ok || m[2*i] < 0 {
		return ""
	}
	return s[m[2*i]:m[2*i+1]]
}

func (tp *dateTemplate) parse(s string, m []int, now time.Time, loc *time.Location) (time.Time, bool) {
	date := tp.group(s, m, "date")
	switch tp.kind {
	case kindEpoch, kindLEpoch:
		f, err := strconv.ParseFloat(date, 64)
		if err != nil {
			return time.Time{}, false
		}
		if tp.kind == kindLEpoch && len(strings.SplitN(date, ".", 2)[0]) > 11 {
			f /= 1000
			if len(strings.SplitN(date, ".", 2)[0]) > 14 {
				f /= 1000
			}
		}
		sec := int64(f)
		return time.Unix(sec, int64((f-float64(sec))*1e9)).In(loc), true
	case kindTAI64N:
		sec, err := strconv.ParseInt(date[2:17], 16, 64)
		if err != nil {
			return time.Time{}, false
		}
		nsec, _ := strconv.ParseInt(date[17:25], 16, 64)
		return time.Unix(sec, nsec).In(loc), true
	}
	num := func(name string) (int, bool) {
		v := strings.TrimSpace(tp.group(s, m, name))
		if v == "" {
			return 0, false
		}
		n, err := strconv.Atoi(v)
		return n, err == nil
	}
	year, hasYear := num("Y")
	if !hasYear {
		if y, ok := num("y"); ok {
			year, hasYear = 2000+y, true
		}
	}
	month := 1
	if mo, ok := num("m"); ok {
		month = mo
	} else if b := tp.group(s, m, "b"); b != "" {
		month = monthIndex(b)
	}
	day, hasDay := num("d")
	if !hasDay {
		day = 1
	}
	hour, _ := num("H")
	if h, ok := num("I"); ok {
		hour = h % 12
		if p := strings.ToLower(tp.group(s, m, "p")); p == "pm" {
			hour += 12
		}
	}
	minute, _ := num("M")
	sec, _ := num("S")
	nsec := 0
	if f := tp.group(s, m, "f"); f != "" {
		if len(f) > 9 {
			f = f[:9]
		}
		n, _ := strconv.Atoi(f + strings.Repeat("0", 9-len(f)))
		nsec = n
	}
	zl := loc
	if z := tp.group(s, m, "z"); z != "" {
		zl = parseZone(z)
	} else if z := tp.group(s, m, "Z"); z == "Z" || z == "UTC" || z == "GMT" {
		zl = time.UTC
	}
	if sec > 59 {
		sec = 59
	}
	if !hasYear {
		year = now.In(zl).Year()
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, zl)
	if t.Day() != day && hasDay {
		return time.Time{}, false // 31 Feb
	}
	if !hasYear && t.After(now.Add(24*time.Hour)) {
		t = t.AddDate(-1, 0, 0)
	}
	if !hasDay && tp.group(s, m, "b") == "" && tp.group(s, m, "m") == "" {
		// time only: today, or yesterday if that is in the future
		n := now.In(zl)
		t = time.Date(n.Year(), n.Month(), n.Day(), hour, minute, sec, nsec, zl)
		if t.After(now) {
			t = t.AddDate(0, 0, -1)
		}
	}
	return t, true
}

var monthNames = []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}

func monthIndex(b string) int {
	if len(b) < 3 {
		return 1
	}
	l := strings.ToLower(b[:3])
	for i, n := range monthNames {
		if n == l {
			return i + 1
		}
	}
	return 1
}

func parseZone(z string) *time.Location {
	switch z {
	case "Z", "UTC", "GMT":
		return time.UTC
	}
	sign := 1
	if z[0] == '-' {
		sign = -1
	}
	d := strings.ReplaceAll(z[1:], ":", "")
	h, _ := strconv.Atoi(d[:2])
	mi := 0
	if len(d) >= 4 {
		mi, _ = strconv.Atoi(d[2:4])
	}
	return time.FixedZone("", sign*(h*3600+mi*60))
}

// fastDate parses, without a regex, the two dates nearly every mail log
// starts with: syslog's "Nov 29 09:18:08" (optional weekday before, year or
// fraction after) and ISO 8601 "2026-11-29T09:18:08.123456+00:00". It
// agrees with the first two default templates at line start; anything it
// does not recognise goes to them.
func fastDate(line string, now time.Time, loc *time.Location) (s, e int, t time.Time, ok bool) {
	if len(line) < 15 {
		return
	}
	if isDigit(line[0]) {
		return fastISO(line, loc)
	}
	p := 0
	if len(line) > 19 && line[3] == ' ' && monthIndex3(line[4:7]) > 0 && line[7] == ' ' && isAlpha(line[0]) && isAlpha(line[1]) && isAlpha(line[2]) {
		p = 4 // "Sun Nov 29 ..."
	}
	mo := monthIndex3(line[p : p+3])
	if mo == 0 || line[p+3] != ' ' {
		return
	}
	q := p + 4
	// %d: "29", " 9", "09", "9"
	day := 0
	switch {
	case q+1 < len(line) && line[q] == ' ' && isDigit(line[q+1]):
		day, q = int(line[q+1]-'0'), q+2
	case q+1 < len(line) && isDigit(line[q]) && isDigit(line[q+1]):
		day, q = int(line[q]-'0')*10+int(line[q+1]-'0'), q+2
	case q < len(line) && isDigit(line[q]):
		day, q = int(line[q]-'0'), q+1
	default:
		return
	}
	if day < 1 || day > 31 || q+9 > len(line) || line[q] != ' ' {
		return
	}
	q++
	if q < len(line) && line[q] == ' ' { // %k's optional space
		q++
	}
	h, mi, sec, q2, good := clock(line, q)
	if !good {
		return
	}
	q = q2
	nsec := 0
	if q+1 < len(line) && line[q] == '.' && isDigit(line[q+1]) {
		nsec, q = fraction(line, q+1)
	}
	year, hasYear := 0, false
	if q+5 <= len(line) && line[q] == ' ' && isDigit(line[q+1]) && isDigit(line[q+2]) && isDigit(line[q+3]) && isDigit(line[q+4]) && (line[q+1] == '1' && line[q+2] == '9' || line[q+1] == '2' && line[q+2] == '0') &&
		(q+5 == len(line) || !isWordByte(line[q+5])) {
		year, hasYear, q = atoi4(line[q+1:]), true, q+5
	}
	if q < len(line) && isWordByte(line[q]) && isWordByte(line[q-1]) {
		return 0, 0, time.Time{}, false
	}
	if !hasYear {
		year = now.In(loc).Year()
	}
	t = time.Date(year, time.Month(mo), day, h, mi, sec, nsec, loc)
	if t.Day() != day {
		return 0, 0, time.Time{}, false
	}
	if !hasYear && t.After(now.Add(24*time.Hour)) {
		t = t.AddDate(-1, 0, 0)
	}
	return 0, q, t, true
}

func fastISO(line string, loc *time.Location) (s, e int, t time.Time, ok bool) {
	if len(line) < 19 || !isDigit(line[1]) || !isDigit(line[2]) || !isDigit(line[3]) || line[4] != '-' ||
		!isDigit(line[5]) || !isDigit(line[6]) || line[7] != '-' || !isDigit(line[8]) || !isDigit(line[9]) || line[10] != 'T' {
		return
	}
	if !(line[0] == '1' && line[1] == '9' || line[0] == '2' && line[1] == '0') {
		return
	}
	year := atoi4(line)
	mo := int(line[5]-'0')*10 + int(line[6]-'0')
	day := int(line[8]-'0')*10 + int(line[9]-'0')
	if mo < 1 || mo > 12 || day < 1 || day > 31 {
		return
	}
	h, mi, sec, q, good := clock(line, 11)
	if !good {
		return
	}
	nsec := 0
	if q+1 < len(line) && (line[q] == '.' || line[q] == ',') && isDigit(line[q+1]) {
		nsec, q = fraction(line, q+1)
	}
	zl := loc
	switch {
	case q < len(line) && line[q] == 'Z':
		zl, q = time.UTC, q+1
	case q+3 <= len(line) && (line[q] == '+' || line[q] == '-') && (line[q+1] == '0' || line[q+1] == '1') && isDigit(line[q+2]):
		end := q + 3
		if end+3 <= len(line) && line[end] == ':' && isDigit(line[end+1]) && isDigit(line[end+2]) {
			end += 3
		} else if end+2 <= len(line) && isDigit(line[end]) && isDigit(line[end+1]) {
			end += 2
		}
		zl, q = parseZone(line[q:end]), end
	}
	if q < len(line) && isWordByte(line[q]) && isWordByte(line[q-1]) {
		return
	}
	t = time.Date(year, time.Month(mo), day, h, mi, sec, nsec, zl)
	if t.Day() != day {
		return 0, 0, time.Time{}, false
	}
	return 0, q, t, true
}

// clock parses "HH:MM:SS" at q (the hour may have one digit).
func clock(line string, q int) (h, mi, sec, end int, ok bool) {
	if q+7 > len(line) {
		return
	}
	if isDigit(line[q]) && q+1 < len(line) && isDigit(line[q+1]) {
		h, q = int(line[q]-'0')*10+int(line[q+1]-'0'), q+2
	} else if isDigit(line[q]) {
		h, q = int(line[q]-'0'), q+1
	} else {
		return
	}
	if q+6 > len(line) || line[q] != ':' || !isDigit(line[q+1]) || !isDigit(line[q+2]) || line[q+3] != ':' || !isDigit(line[q+4]) || !isDigit(line[q+5]) {
		return
	}
	mi = int(line[q+1]-'0')*10 + int(line[q+2]-'0')
	sec = int(line[q+4]-'0')*10 + int(line[q+5]-'0')
	if h > 23 || mi > 59 || sec > 61 {
		return
	}
	if sec > 59 {
		sec = 59
	}
	return h, mi, sec, q + 6, true
}

func fraction(line string, q int) (nsec, end int) {
	n, digits := 0, 0
	for q < len(line) && isDigit(line[q]) {
		if digits < 9 {
			n = n*10 + int(line[q]-'0')
			digits++
		}
		q++
	}
	for ; digits < 9; digits++ {
		n *= 10
	}
	return n, q
}

func atoi4(s string) int {
	return int(s[0]-'0')*1000 + int(s[1]-'0')*100 + int(s[2]-'0')*10 + int(s[3]-'0')
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func monthIndex3(s string) int {
	if len(s) < 3 {
		return 0
	}
	switch s[:3] {
	case "Jan":
		return 1
	case "Feb":
		return 2
	case "Mar":
		return 3
	case "Apr":
		return 4
	case "May":
		return 5
	case "Jun":
		return 6
	case "Jul":
		return 7
	case "Aug":
		return 8
	case "Sep":
		return 9
	case "Oct":
		return 10
	case "Nov":
		return 11
	case "Dec":
		return 12
	}
	return 0
}
