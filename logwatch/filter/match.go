package filter

import (
	"container/list"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// groups are the named groups of a match that took part in it (fail2ban's
// groupdict without the None values).
type groups map[string]string

// find returns the named groups of the first match in s, or nil. A
// timeout of a backtracking regex is a miss.
func (r *Regex) find(s string) (g groups, start, end int) {
	if !mayMatch(r.lits, s) {
		return nil, 0, 0
	}
	if r.re2 != nil {
		m := r.re2.FindStringSubmatchIndex(s)
		if m == nil {
			return nil, 0, 0
		}
		g = groups{}
		for i, n := range r.names {
			if n != "" && m[2*i] >= 0 {
				if old, set := g[n]; !set || old == "" {
					g[n] = s[m[2*i]:m[2*i+1]]
				}
			}
		}
		return g, m[0], m[1]
	}
	m, err := r.re.FindStringMatch(s)
	if err != nil || m == nil {
		return nil, 0, 0
	}
	g = groups{}
	for _, grp := range m.Groups() {
		if grp.Name != "" && (grp.Name[0] < '0' || grp.Name[0] > '9') && len(grp.Captures) > 0 {
			g[grp.Name] = grp.String()
		}
	}
	start, n := m.ByteRange()
	return g, start, min(start+n, len(s))
}

// Outcome is what a line did to a filter, in fail2ban-regex's words.
type Outcome int

// Outcomes.
const (
	Missed Outcome = iota
	Ignored
	Matched
)

// Failure is one failure a line completed: the client to count.
type Failure struct {
	Time  time.Time  // the line's date (datepattern); the time given to Line when it has none
	Host  netip.Addr // always a valid address
	User  string     // <F-USER>, else the first <F-ALT_USER...> (in a session: the last user named)
	ID    string     // <F-MLFID> that joined the lines, else <F-ID>
	Regex int        // index into Filter.Fail of the regex that completed it
}

// Result is what a line did, in the detail test-filter reports.
type Result struct {
	Outcome  Outcome
	Regex    int        // index into Fail of the first regex that matched, -1 if none
	Host     netip.Addr // the client address; zero when the regex took a host name (<HOST> as DNS) or no address
	HostName string     // <HOST> when it matched a name, not an address; never resolved
	User     string     // <F-USER>, else the first <F-ALT_USER...>
	ID       string     // <F-MLFID>, else <F-ID>
	NoFail   bool       // the line is <F-NOFAIL> (fail2ban-regex counts it ignored)
	Pending  bool       // matched with an <F-MLFID> but no host yet: a later line may complete it
	TooLong  bool       // the line exceeded MaxLineLength and was not matched
	Groups   map[string]string

	Time        time.Time // the line's date; zero when it has none
	PrefMatched bool      // prefregex matched (or the filter has none and a failregex was tried)
	Hits        []int     // every failregex that counted a hit (one unless the tracker checks all)
	Failures    []Failure // the failures completed, with a valid address
	Joined      int       // earlier lines of the maxlines buffer the match took in
}

// Match examines line (without its trailing newline) on its own. ok is
// true when a failregex matched, no ignoreregex did, the line is not
// <F-NOFAIL> and it named a valid client address in Result.Host. Use a
// Tracker for a source's lines in order (multi-line filters, dates).
func (f *Filter) Match(line string) (Result, bool) {
	r := f.Examine(line)
	return r, r.Outcome == Matched && !r.NoFail && r.Host.IsValid()
}

// Examine examines one line on its own, as fail2ban does a single-line
// filter: the date is cut out, prefregex must match and its <F-CONTENT> is
// what the failregexes see, the first matching failregex wins unless an
// ignoreregex matches the same text. No state is kept: <F-MLFID> lines are
// not joined (a Tracker joins them).
func (f *Filter) Examine(line string) Result {
	t := tracker{f: f, loc: time.Local}
	return t.step(line, time.Now())
}

// MaxTracked bounds the multi-line sessions (<F-MLFID> values) a Tracker
// keeps; the oldest is dropped first. TrackTTL drops a session not seen
// for that long (fail2ban keeps 100 for 5 minutes).
const (
	MaxTracked = 10000
	TrackTTL   = 10 * time.Minute
)

// Tracker follows the lines of one source (one log file or journal
// stream) in order, as fail2ban's filter does: it keeps the maxlines
// buffer and the multi-line sessions joined by <F-MLFID>, so that a
// failure whose host was on an earlier line of the same session
// (Postfix queue id, process id, Dovecot session) is reported once, with
// that host. <F-NOFAIL> lines (a session that has not failed yet) are
// remembered, not reported; <F-MLFFORGET> ends a session.
//
// Memory is bounded: at most MaxTracked sessions, each forgotten
// TrackTTL after its last line, and maxlines lines. A Tracker is not safe
// for concurrent use; use one per source.
type Tracker struct{ t tracker }

// NewTracker returns a Tracker for one source, with fail2ban's daemon
// behaviour: the first matching failregex wins.
func (f *Filter) NewTracker() *Tracker {
	return &Tracker{t: tracker{f: f, loc: time.Local, ml: newMLCache()}}
}

// NewRegexTracker returns a Tracker that behaves as fail2ban-regex does:
// every failregex is tried on every line (each counts its hits) and a
// session matched without a host yet counts as a matched line.
func (f *Filter) NewRegexTracker() *Tracker {
	return &Tracker{t: tracker{f: f, loc: time.Local, ml: newMLCache(), checkAll: true, countPending: true}}
}

// Line examines the next line of the source (without its newline); now is
// when it was read, the event time of a line without a date. It returns the
// failures the line completes, usually none.
func (tr *Tracker) Line(line string, now time.Time) []Failure {
	return tr.t.step(line, now).Failures
}

// Examine is Line with the whole Result, for test-filter.
func (tr *Tracker) Examine(line string, now time.Time) Result {
	return tr.t.step(line, now)
}

// Sessions reports how many multi-line sessions are being tracked.
func (tr *Tracker) Sessions() int { return tr.t.ml.len() }

type tracker struct {
	f            *Filter
	loc          *time.Location
	buf          []string // the maxlines buffer (lines without their date)
	ml           *mlCache // nil in Examine: no sessions
	checkAll     bool
	countPending bool
	lastPref     bool
}

// step is fail2ban's processLine and findFailure for one line.
func (t *tracker) step(line string, now time.Time) Result {
	f := t.f
	res := Result{Regex: -1}
	if len(line) > MaxLineLength {
		res.TooLong = true
		return res
	}
	text := line
	date := now
	if s, e, dt, ok := f.dates.find(line, now, t.loc); ok {
		if s == 0 {
			text = line[e:] // no copy for the usual date at line start
		} else {
			text = line[:s] + line[e:]
		}
		date, res.Time = dt, dt
	}
	multi := f.MaxLines > 1
	var orgBuf []string
	var buf string
	if multi {
		t.buf = append(t.buf, text)
		if len(t.buf) > f.MaxLines {
			t.buf = t.buf[len(t.buf)-f.MaxLines:]
		}
		orgBuf = t.buf
		buf = strings.Join(t.buf, "\n") + "\n"
	} else {
		buf = text
	}
	ignored := func(s string) bool {
		for _, ig := range f.Ignore {
			if g, _, _ := ig.find(s); g != nil {
				return true
			}
		}
		return false
	}
	// fail2ban ignores first when there are fewer ignoreregexes than
	// failregexes - 2.
	if len(f.Ignore) > 0 && len(f.Ignore) < len(f.Fail)-2 && ignored(buf) {
		res.Outcome = Ignored
		// fail2ban-regex then counts the prefregex match of the line before
		res.PrefMatched = t.lastPref
		return res
	}
	var pre groups
	if f.Pref != nil {
		g, _, _ := f.Pref.find(buf)
		t.lastPref = g != nil
		if g == nil {
			return res
		}
		if c, ok := g["content"]; ok && c != "" {
			buf = c
			if multi {
				orgBuf = []string{c}
				t.buf = orgBuf
			}
		}
		delete(g, "content")
		pre = g
	}
	res.PrefMatched = true
	isIgnored, anyFail := false, false
	for i, re := range f.Fail {
		g, ms, me := re.find(buf)
		if g == nil {
			continue
		}
		if len(f.Ignore) > 0 {
			s := buf
			if multi {
				s = matchedText(buf, ms, me)
			}
			if ignored(s) {
				isIgnored = true
				if res.Regex < 0 {
					res.Regex = i
				}
				if !t.checkAll {
					break
				}
				continue
			}
		}
		if multi {
			kept, joined := unmatched(orgBuf, buf, ms, me, g)
			res.Joined += joined
			t.buf = kept
			buf = strings.Join(kept, "\n") + "\n"
		}
		if len(pre) > 0 {
			for k, v := range pre {
				if _, set := g[k]; !set {
					g[k] = v
				}
			}
		}
		mlfid, hasMLFID := g["mlfid"]
		if hasMLFID && t.ml != nil {
			g = t.ml.merge(mlfid, g, now)
			if g["nofail"] != "" && !t.checkAll {
				res.NoFail = true
				if res.Regex < 0 {
					res.Regex = i
				}
				break
			}
		}
		host, name := g.host()
		if !host.IsValid() && name == "" && g["fid"] == "" && hasMLFID {
			// a session failure without a host yet: pending
			g["mlfpending"] = "1"
			if res.Regex < 0 {
				res.Regex, res.Pending = i, true
			}
			if !t.countPending {
				if !t.checkAll {
					break
				}
				continue
			}
		}
		res.Hits = append(res.Hits, i)
		nofail := g["nofail"] != ""
		if res.Regex < 0 || res.Pending && res.Regex == i {
			res.Regex, res.Groups = i, g.clone()
			res.Host, res.HostName = host, name
			res.User = g.user()
			res.ID = mlfid
			if !hasMLFID {
				res.ID = g["fid"]
			}
		}
		if nofail {
			res.NoFail = true
		} else {
			anyFail = true
			if host.IsValid() {
				id := mlfid
				if !hasMLFID {
					id = g["fid"]
				}
				res.Failures = append(res.Failures, Failure{Time: date, Host: host, User: g.user(), ID: id, Regex: i})
			}
		}
		if !t.checkAll {
			break
		}
	}
	switch {
	case isIgnored || res.NoFail && !anyFail:
		res.Outcome = Ignored
	case anyFail:
		res.Outcome = Matched
	}
	return res
}

func (g groups) clone() groups {
	c := make(groups, len(g))
	for k, v := range g {
		c[k] = v
	}
	return c
}

// host returns the address or the host name a match took.
func (g groups) host() (netip.Addr, string) {
	if v, ok := g["ip4"]; ok {
		return parseAddr(v), ""
	}
	if v, ok := g["ip6"]; ok {
		return parseAddr(v), ""
	}
	if v, ok := g["dns"]; ok {
		if a := parseAddr(v); a.IsValid() {
			return a, ""
		}
		return netip.Addr{}, v
	}
	return netip.Addr{}, ""
}

// user returns <F-USER> (in a session, the last one given), else the first
// non-empty <F-ALT_USER...>.
func (g groups) user() string {
	if u := g["user"]; u != "" {
		return u
	}
	var alts []string
	for k := range g {
		if strings.HasPrefix(k, "alt_user") {
			alts = append(alts, k)
		}
	}
	sort.Strings(alts)
	for _, k := range alts {
		if g[k] != "" {
			return g[k]
		}
	}
	return ""
}

// matchedText returns the whole lines of buf that [ms, me) touches.
func matchedText(buf string, ms, me int) string {
	ls := strings.LastIndexByte(buf[:ms], '\n') + 1
	le := len(buf)
	if me > 0 {
		if i := strings.IndexByte(buf[me-1:], '\n'); i >= 0 {
			le = me - 1 + i + 1
		}
	}
	return buf[ls:le]
}

// maxSkipLines bounds the <SKIPLINES> tags of one regex that are honoured.
const maxSkipLines = 16

// unmatched returns the lines of the buffer the match [ms, me) did not
// take (those before and after it, and the ones <SKIPLINES> skipped, as
// failregex.py keeps them), and how many earlier lines (not the newest) it
// took.
func unmatched(lines []string, buf string, ms, me int, g groups) ([]string, int) {
	ls := strings.LastIndexByte(buf[:ms], '\n') + 1
	le := len(buf)
	if me > 0 {
		if i := strings.IndexByte(buf[me-1:], '\n'); i >= 0 {
			le = me - 1 + i + 1
		}
	}
	first := strings.Count(buf[:ls], "\n")
	last := strings.Count(buf[:le], "\n")
	if last > len(lines) {
		last = len(lines)
	}
	if first > last {
		first = last
	}
	kept := append([]string(nil), lines[:first]...)
	taken := append([]string(nil), lines[first:last]...)
	newest := last == len(lines)
	for i := 0; i < maxSkipLines; i++ {
		sk, ok := g[fmt.Sprintf("skiplines%d", i)]
		if !ok {
			continue
		}
		n := 0
		for _, l := range strings.Split(strings.TrimSuffix(sk, "\n"), "\n") {
			if sk == "" {
				break
			}
			for j := n; j < len(taken); j++ {
				if taken[j] == l {
					kept = append(kept, l)
					taken = append(taken[:j], taken[j+1:]...)
					n = j
					break
				}
			}
		}
	}
	kept = append(kept, lines[last:]...)
	joined := len(taken)
	if newest && joined > 0 {
		joined-- // the newest line is the one being examined
	}
	return kept, joined
}

// maxSessionValue bounds each value a session keeps (a user name, an id),
// and maxSessionUsers the users it remembers, so that MaxTracked sessions
// hold a few megabytes at most, whatever the lines.
const (
	maxSessionValue = 256
	maxSessionUsers = 8
)

// keep copies v out of the line it points into (the session outlives it),
// cut at maxSessionValue bytes.
func keep(v string) string {
	if len(v) > maxSessionValue {
		v = v[:maxSessionValue]
	}
	return strings.Clone(v)
}

// mlCache holds the multi-line sessions of one source.
type mlCache struct {
	m     map[string]*list.Element
	order *list.List // oldest first
}

type mlSession struct {
	id    string
	g     groups
	users map[string]struct{}
	seen  time.Time
}

func newMLCache() *mlCache {
	return &mlCache{m: map[string]*list.Element{}, order: list.New()}
}

func (c *mlCache) len() int {
	if c == nil {
		return 0
	}
	return len(c.m)
}

// expire drops the sessions not seen since now - TrackTTL.
func (c *mlCache) expire(now time.Time) {
	for e := c.order.Front(); e != nil; e = c.order.Front() {
		s := e.Value.(*mlSession)
		if now.Sub(s.seen) < TrackTTL {
			return
		}
		c.order.Remove(e)
		delete(c.m, s.id)
	}
}

// merge is fail2ban's _mergeFailure: it joins the match g to its session
// and returns the merged groups.
func (c *mlCache) merge(id string, g groups, now time.Time) groups {
	c.expire(now)
	const (
		nofail = 1 << iota
		forget
		wasNo
		gained
	)
	flags := 0
	if g["mlfgained"] != "" {
		flags |= gained | nofail
		if g["nofail"] == "" {
			g["nofail"] = g["mlfgained"]
		}
	} else if g["nofail"] != "" {
		flags |= nofail
	}
	if _, ok := g["mlfforget"]; ok {
		if g["mlfforget"] != "" {
			flags |= forget
		}
		delete(g, "mlfforget")
	}
	var users map[string]struct{}
	if e, ok := c.m[id]; ok {
		s := e.Value.(*mlSession)
		if u := g["user"]; u != "" && len(s.users) < maxSessionUsers {
			if s.users == nil {
				s.users = map[string]struct{}{}
			}
			s.users[keep(u)] = struct{}{}
		}
		users = s.users
		if s.g["nofail"] != "" {
			flags |= wasNo
		}
		delete(s.g, "nofail")
		if s.g["mlfgained"] != "" {
			flags |= wasNo
		}
		delete(s.g, "mlfgained")
		if flags&gained != 0 {
			delete(s.g, "mlfpending")
		}
		for k, v := range g {
			s.g[k] = keep(v)
		}
		g = s.g
		if flags&forget != 0 {
			c.order.Remove(e)
			delete(c.m, id)
		} else {
			s.seen = now
			c.order.MoveToBack(e)
		}
	} else if flags&forget == 0 {
		for k, v := range g {
			g[k] = keep(v)
		}
		s := &mlSession{id: keep(id), g: g, seen: now}
		if u := g["user"]; u != "" {
			s.users = map[string]struct{}{u: {}}
		}
		users = s.users
		if len(c.m) >= MaxTracked {
			old := c.order.Front()
			c.order.Remove(old)
			delete(c.m, old.Value.(*mlSession).id)
		}
		c.m[id] = c.order.PushBack(s)
	}
	_, pending := g["mlfpending"]
	delete(g, "mlfpending")
	if pending || len(users) > 1 {
		// a pending failure or a second user: the session has failed
		delete(g, "nofail")
		delete(g, "mlfgained")
	}
	return g
}
