package firewall

import (
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// This file is the iptables backend's planning: pure functions from what the
// kernel holds (iptState) and what it should hold to the operations that get
// it there (iptOps). They touch nothing, so the tests check them without root
// (iptables_plan_test.go); iptables.go reads the state and applies the ops.

// iptState is what the kernel holds of ours, by family (0 IPv4, 1 IPv6).
type iptState struct {
	chain [2]bool      // the MAILGUARD chain exists
	jump  [2]bool      // INPUT jumps to it
	rules [2][]iptRule // its rules, in order
	// sets are our ipsets that exist, with their members when they were
	// read (ipset save), nil members otherwise (ipset list -n).
	sets map[string][]member
}

// member is one element of an ipset.
type member struct {
	prefix  netip.Prefix
	timeout time.Duration // left when read; zero: none
}

// iptRule is one rule of the MAILGUARD chain, parsed or to be made.
type iptRule struct {
	set   string   // the ipset it matches; "" for a rule not ours in form
	ports []uint16 // its port group (from the comment)
	chunk string   // its --dports value; "" for all ports
	spec  []string // as listed, for Delete; nil for a rule to be made
}

func (r iptRule) id() string { return r.set + "|" + portsKey(r.ports) + "|" + r.chunk }

func (r iptRule) args() []string {
	a := []string{"-p", "tcp"}
	if r.chunk != "" {
		a = append(a, "-m", "multiport", "--dports", r.chunk)
	}
	return append(a, "-m", "set", "--match-set", r.set, "src",
		"-m", "comment", "--comment", "mailguard:ports="+portsKey(r.ports), "-j", "DROP")
}

// setOp adds (or renews) or deletes one member of a set: a line of
// `ipset restore -exist`.
type setOp struct {
	del     bool
	set     string
	prefix  netip.Prefix
	timeout int64 // seconds, adds only; 0: none
}

func (o setOp) String() string {
	if o.del {
		return fmt.Sprintf("del %s %s", o.set, o.prefix)
	}
	return fmt.Sprintf("add %s %s timeout %d", o.set, o.prefix, o.timeout)
}

// iptOps is a change of the kernel, applied in this order: chains, sets,
// rules, jumps (so a new jump never points at an empty chain), member
// changes, rule deletions, set destructions (a set in use by a rule cannot
// be destroyed).
type iptOps struct {
	newChain   [2]bool
	createSets []string
	addRules   [2][]iptRule
	addJump    [2]bool
	members    []setOp
	delRules   [2][]iptRule
	destroy    []string
}

// repairs returns the structural changes of p (everything but members):
// after the first Sync, those mean someone changed the kernel by hand.
func (p iptOps) repairs() []string {
	var out []string
	for _, l := range p.lines() {
		if !strings.HasPrefix(l, "add ") && !strings.HasPrefix(l, "del ") {
			out = append(out, l)
		}
	}
	return out
}

// The iptables layout, the same for iptables and ip6tables:
//
//	-A INPUT -p tcp -m conntrack --ctstate NEW -m comment --comment mailguard -j MAILGUARD   (first rule)
//	-N MAILGUARD
//	-A MAILGUARD -p tcp -m multiport --dports 25,465,587 -m set --match-set mailguard4-1a2b3c4d src -m comment --comment mailguard:ports=25_465_587 -j DROP
//
// with an ipset (hash:net, per-entry timeouts) per family and port group.
// Only new TCP connections jump to MAILGUARD, so established traffic never
// walks the ban rules, and a packet meets one rule per port group and a hash
// lookup whatever the number of bans.
const (
	iptChain   = "MAILGUARD"
	iptTable   = "filter"
	ipsetMax   = 1 << 20 // maxelem of each set
	multiportN = 15      // iptables multiport takes at most 15 ports
	// ipset timeouts are seconds below 2^31/1000; longer bans are renewed
	// by Sync when the kernel's expiry comes closer than half this.
	ipsetMaxTimeout = 2147483 * time.Second
)

var iptJump = []string{"-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "mailguard", "-j", iptChain}

// chunks splits ports into --dports values of at most 15 ports; [""] for all.
func chunks(ports []uint16) []string {
	if len(ports) == 0 {
		return []string{""}
	}
	var out []string
	for c := range slices.Chunk(ports, multiportN) {
		s := make([]string, len(c))
		for i, p := range c {
			s[i] = strconv.Itoa(int(p))
		}
		out = append(out, strings.Join(s, ","))
	}
	return out
}

// setName names the ipset of a family and port group; ipset names are at
// most 31 bytes, so the group is hashed (the rules' comments keep the ports).
func setName(v6 bool, ports []uint16) string {
	h := fnv.New32a()
	h.Write([]byte(portsKey(ports)))
	fam := "4"
	if v6 {
		fam = "6"
	}
	return fmt.Sprintf("mailguard%s-%08x", fam, h.Sum32())
}

func isOurSet(name string) bool {
	return strings.HasPrefix(name, "mailguard4-") || strings.HasPrefix(name, "mailguard6-")
}

func setOf(e Entry) string { return setName(e.Prefix.Addr().Is6(), e.Ports) }

func famIndex(p netip.Prefix) int {
	if p.Addr().Is6() {
		return 1
	}
	return 0
}

// setRules returns the rules a set of the group needs.
func setRules(v6 bool, ports []uint16) []iptRule {
	var out []iptRule
	for _, c := range chunks(ports) {
		out = append(out, iptRule{set: setName(v6, ports), ports: ports, chunk: c})
	}
	return out
}

// parseRule parses the arguments of an `iptables -S MAILGUARD` line after
// "-A MAILGUARD". A rule not ours in form (a hand-made one, or a rule per ban
// left by an older mailguard) has only spec set: Sync deletes it.
func parseRule(spec []string) iptRule {
	r := iptRule{spec: spec}
	var comment, target string
	for i := 0; i+1 < len(spec); i++ {
		switch spec[i] {
		case "-s", "-d", "-i", "!":
			return iptRule{spec: spec}
		case "--dports":
			r.chunk = spec[i+1]
		case "--match-set":
			r.set = spec[i+1]
		case "--comment":
			comment = spec[i+1]
		case "-j":
			target = spec[i+1]
		}
	}
	ports, ok := strings.CutPrefix(comment, "mailguard:ports=")
	if !ok || !isOurSet(r.set) || target != "DROP" {
		return iptRule{spec: spec}
	}
	if r.ports, ok = parsePortsKey(ports); !ok {
		return iptRule{spec: spec}
	}
	return r
}

// splitQuoted splits an `iptables -S` line into arguments, undoing its
// double quotes.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	in, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && in && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == '"':
			in, quoted = !in, true
		case c == ' ' && !in:
			if cur.Len() > 0 || quoted {
				out = append(out, cur.String())
			}
			cur.Reset()
			quoted = false
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() > 0 || quoted {
		out = append(out, cur.String())
	}
	return out
}

// setPorts returns the port group of each set a rule of h matches: the sets
// whose members ban something.
func (h iptState) setPorts() map[string][]uint16 {
	out := map[string][]uint16{}
	for f := range h.rules {
		for _, r := range h.rules[f] {
			if r.set != "" {
				out[r.set] = r.ports
			}
		}
	}
	return out
}

// ready returns the sets that drop packets as they are: they exist, a rule
// matches them, and that rule's chain is jumped to. Adding to or deleting
// from them is one `ipset restore`.
func (h iptState) ready() map[string]bool {
	out := map[string]bool{}
	for f := range h.rules {
		if !h.chain[f] || !h.jump[f] {
			continue
		}
		for _, r := range h.rules[f] {
			if _, ok := h.sets[r.set]; ok && r.set != "" {
				out[r.set] = true
			}
		}
	}
	return out
}

// entries returns the bans h holds: the members of the sets a rule matches,
// expiring timeout after now.
func (h iptState) entries(now time.Time) map[entryKey]Entry {
	ports := h.setPorts()
	out := map[entryKey]Entry{}
	for name, ms := range h.sets {
		ps, ok := ports[name]
		if !ok {
			continue // a set no rule uses bans nothing
		}
		for _, m := range ms {
			e := Entry{Prefix: m.prefix, Ports: ps}
			if m.timeout > 0 {
				e.Expires = now.Add(m.timeout)
			}
			out[e.key()] = e
		}
	}
	return out
}

// ensure adds to p what the kernel lacks for the sets of es to drop
// packets: the chains, the jumps, the sets and their rules.
func (p *iptOps) ensure(h iptState, es map[entryKey]Entry) {
	for f := range 2 {
		p.newChain[f] = p.newChain[f] || !h.chain[f]
		p.addJump[f] = p.addJump[f] || !h.jump[f]
	}
	have := [2]map[string]bool{{}, {}}
	for f := range h.rules {
		for _, r := range h.rules[f] {
			have[f][r.id()] = true
		}
	}
	groups := map[string]Entry{}
	for _, e := range es {
		groups[setOf(e)] = e
	}
	for _, name := range slices.Sorted(maps.Keys(groups)) {
		e := groups[name]
		if _, ok := h.sets[name]; !ok {
			p.createSets = append(p.createSets, name)
		}
		f := famIndex(e.Prefix)
		for _, r := range setRules(f == 1, e.Ports) {
			if !have[f][r.id()] {
				p.addRules[f] = append(p.addRules[f], r)
				have[f][r.id()] = true
			}
		}
	}
}

// sortedEntries returns es in a stable order, for stable plans.
func sortedEntries(es map[entryKey]Entry) []Entry {
	out := slices.Collect(maps.Values(es))
	sortEntries(out)
	return out
}

// planAdd bans add (renewing the expiry of members already held) and
// creates whatever of the chains, jumps, sets and rules is missing.
func planAdd(h iptState, add map[entryKey]Entry, now time.Time) iptOps {
	var p iptOps
	p.ensure(h, add)
	for _, e := range sortedEntries(add) {
		p.members = append(p.members, setOp{set: setOf(e), prefix: e.Prefix, timeout: ipsetTimeout(e, now)})
	}
	return p
}

// planRemove lifts del from the sets that exist; a member not held is no
// error (`ipset restore -exist`).
func planRemove(h iptState, del map[entryKey]Entry) iptOps {
	var p iptOps
	for _, e := range sortedEntries(del) {
		if _, ok := h.sets[setOf(e)]; ok {
			p.members = append(p.members, setOp{del: true, set: setOf(e), prefix: e.Prefix})
		}
	}
	return p
}

// planSync makes the kernel hold exactly want: it repairs the chains, jumps,
// sets and rules, adds missing members and renews expiries that drifted,
// deletes the other members, the rules no wanted set needs (and rules not
// ours in form, and duplicates) and the sets no wanted entry needs. h must
// hold the sets' members.
func planSync(h iptState, want map[entryKey]Entry, now time.Time) iptOps {
	var p iptOps
	p.ensure(h, want)
	needSet := map[string]bool{}
	needRule := [2]map[string]bool{{}, {}}
	for _, e := range want {
		name := setOf(e)
		needSet[name] = true
		f := famIndex(e.Prefix)
		for _, r := range setRules(f == 1, e.Ports) {
			needRule[f][r.id()] = true
		}
	}
	for f := range h.rules {
		seen := map[string]bool{}
		for _, r := range h.rules[f] {
			if r.set == "" || !needRule[f][r.id()] || seen[r.id()] {
				p.delRules[f] = append(p.delRules[f], r)
			}
			seen[r.id()] = true
		}
	}
	held := map[string]member{} // "set prefix" → member
	for name, ms := range h.sets {
		for _, m := range ms {
			held[name+" "+m.prefix.String()] = m
		}
	}
	wanted := map[string]bool{}
	for _, e := range sortedEntries(want) {
		name := setOf(e)
		k := name + " " + e.Prefix.String()
		wanted[k] = true
		m, ok := held[k]
		var have time.Time
		if ok && m.timeout > 0 {
			have = now.Add(m.timeout)
		}
		if !ok || !ipsetSameExpiry(have, e.Expires, now) {
			p.members = append(p.members, setOp{set: name, prefix: e.Prefix, timeout: ipsetTimeout(e, now)})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(h.sets)) {
		if !needSet[name] {
			p.destroy = append(p.destroy, name) // with its members
			continue
		}
		for _, m := range h.sets[name] {
			if !wanted[name+" "+m.prefix.String()] {
				p.members = append(p.members, setOp{del: true, set: name, prefix: m.prefix})
			}
		}
	}
	return p
}

// ipsetTimeout is the timeout, in seconds, to give ipset for e: rounded up,
// capped at what ipset takes; 0 for a ban that never ends.
func ipsetTimeout(e Entry, now time.Time) int64 {
	if e.Expires.IsZero() {
		return 0
	}
	d := min(e.Expires.Sub(now), ipsetMaxTimeout)
	return max(int64((d+time.Second-1)/time.Second), 1)
}

// ipsetSameExpiry compares a held expiry with a wanted one; ipset timeouts
// are capped, so a long ban is renewed only when its kernel expiry comes
// closer than half the cap.
func ipsetSameExpiry(have, want, now time.Time) bool {
	if !want.IsZero() && want.Sub(now) > ipsetMaxTimeout && !have.IsZero() {
		return have.Sub(now) > ipsetMaxTimeout/2
	}
	return sameExpiry(have, want)
}

// lines renders p one operation a line, in the order apply runs them: for
// logs and tests.
func (p iptOps) lines() []string {
	var out []string
	fam := [2]string{"4", "6"}
	for f := range 2 {
		if p.newChain[f] {
			out = append(out, "chain "+fam[f])
		}
	}
	for _, s := range p.createSets {
		out = append(out, "create "+s)
	}
	for f := range 2 {
		for _, r := range p.addRules[f] {
			out = append(out, "rule "+fam[f]+" "+r.id())
		}
	}
	for f := range 2 {
		if p.addJump[f] {
			out = append(out, "jump "+fam[f])
		}
	}
	for _, o := range p.members {
		out = append(out, o.String())
	}
	for f := range 2 {
		for _, r := range p.delRules[f] {
			out = append(out, "delete "+fam[f]+" "+strings.Join(r.spec, " "))
		}
	}
	for _, s := range p.destroy {
		out = append(out, "destroy "+s)
	}
	return out
}
