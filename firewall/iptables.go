package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// The iptables layout, the same for iptables and ip6tables:
//
//	-A INPUT -p tcp -m conntrack --ctstate NEW -m comment --comment mailguard -j MAILGUARD   (first rule)
//	-N MAILGUARD
//
// with ipset (hash:net, per-entry timeouts; a set per family and port group):
//
//	-A MAILGUARD -p tcp -m multiport --dports 25,465,587 -m set --match-set mailguard4-1a2b3c4d src -m comment --comment mailguard:ports=25_465_587 -j DROP
//
// without ipset, a rule per ban that stops matching at its expiry (xt_time),
// the expiry also in the comment; the backend's sweeper deletes rules whose
// time has passed:
//
//	-A MAILGUARD -s 192.0.2.7/32 -p tcp -m multiport --dports 25,465,587 -m time --datestop 2026-01-01T00:00:00 -m comment --comment mailguard:ports=25_465_587:until=1767225600 -j DROP
//
// Only new TCP connections jump to MAILGUARD, so established traffic never
// walks the ban rules. With ipset a packet meets one rule per port group and a
// hash lookup; with a rule per ban it walks every rule: fine for hundreds,
// slow for tens of thousands (see the README's measurements).
const (
	iptChain   = "MAILGUARD"
	iptTable   = "filter"
	ipsetMax   = 1 << 20 // maxelem of each set
	multiportN = 15      // iptables multiport takes at most 15 ports
	// ipset timeouts are seconds below 2^31/1000; longer bans are renewed
	// by Sync when the kernel's expiry comes closer than this.
	ipsetMaxTimeout = 2147483 * time.Second
)

var iptJump = []string{"-p", "tcp", "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "mailguard", "-j", iptChain}

// IPTables is the iptables backend. It owns the chain MAILGUARD in the filter
// tables of iptables and ip6tables, its jump from INPUT and the ipsets named
// mailguard4-* and mailguard6-*, and touches nothing else.
type IPTables struct {
	mu     sync.Mutex
	ns     *nsThread // runs every command, in Options.NetNS
	fams   [2]*iptables.IPTables
	ipset  string // path of the ipset program; empty: a rule per ban
	now    func() time.Time
	log    *slog.Logger
	stop   chan struct{}
	done   chan struct{}
	closed bool
	// ready holds the ipsets this instance made sure exist with their
	// rules: Add and Remove on them are one `ipset restore`, no listing.
	ready map[string]bool
}

// NewIPTables opens the iptables backend, creates its chains and the jumps to
// them, and (in rule-per-ban mode) starts the sweeper that deletes expired
// rules. It fails, naming the fix, without CAP_NET_ADMIN or without the
// iptables programs. With the ipset program installed (and o.NoIPSet unset)
// it keeps bans in ipsets.
func NewIPTables(ctx context.Context, o Options) (*IPTables, error) {
	return newIPTables(ctx, o, true)
}

func newIPTables(ctx context.Context, o Options, setup bool) (*IPTables, error) {
	o = o.withDefaults()
	if !hasNetAdmin() {
		return nil, explain(NameIPTables, errNoNetAdmin)
	}
	ns, err := startNS(o.NetNS)
	if err != nil {
		return nil, fmt.Errorf("iptables: %w", err)
	}
	b := &IPTables{ns: ns, now: o.Now, log: o.Log, ready: map[string]bool{}}
	if !o.NoIPSet {
		b.ipset, _ = exec.LookPath("ipset")
	}
	ns.do(func() {
		for i, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
			if b.fams[i], err = iptables.New(iptables.IPFamily(proto), iptables.Timeout(10)); err != nil {
				return
			}
		}
	})
	if err != nil {
		ns.stop()
		return nil, explain(NameIPTables, err)
	}
	if setup {
		if err := b.run(b.ensureChains); err != nil {
			ns.stop()
			return nil, explain(NameIPTables, err)
		}
		if b.ipset == "" {
			b.stop, b.done = make(chan struct{}), make(chan struct{})
			go b.sweep(o.SweepInterval)
			b.log.Info("iptables: one rule per ban (no ipset): slow with thousands of bans; install ipset")
		}
	}
	return b, nil
}

// run calls fn on the namespace thread, holding b.mu.
func (b *IPTables) run(fn func() error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("iptables: closed")
	}
	var err error
	b.ns.do(func() { err = fn() })
	return err
}

func (b *IPTables) ensureChains() error {
	for _, ipt := range b.fams {
		ok, err := ipt.ChainExists(iptTable, iptChain)
		if err != nil {
			return fmt.Errorf("check chain %s: %w", iptChain, err)
		}
		if !ok {
			if err := ipt.NewChain(iptTable, iptChain); err != nil {
				return fmt.Errorf("create chain %s: %w", iptChain, err)
			}
		}
		ok, err = ipt.Exists(iptTable, "INPUT", iptJump...)
		if err != nil {
			return fmt.Errorf("check jump to %s: %w", iptChain, err)
		}
		if !ok {
			if err := ipt.Insert(iptTable, "INPUT", 1, iptJump...); err != nil {
				return fmt.Errorf("insert jump to %s: %w", iptChain, err)
			}
		}
	}
	return nil
}

// iptRule is one rule of the MAILGUARD chain, parsed or to be made.
type iptRule struct {
	src   netip.Prefix // a ban's prefix, rule-per-ban mode
	set   string       // a set's name, ipset mode
	ports []uint16     // the port group (from the comment)
	chunk string       // the --dports value of this rule; "" for all
	until int64        // rule-per-ban: expiry, Unix seconds; 0 never
	spec  []string     // as listed, for Delete
}

func (r iptRule) id() string {
	return fmt.Sprintf("%v|%s|%s|%s|%d", r.src, r.set, portsKey(r.ports), r.chunk, r.until)
}

func (r iptRule) comment() string {
	c := "mailguard:ports=" + portsKey(r.ports)
	if r.src.IsValid() {
		c += ":until=" + strconv.FormatInt(r.until, 10)
	}
	return c
}

func (r iptRule) args() []string {
	var a []string
	if r.src.IsValid() {
		a = append(a, "-s", r.src.String())
	}
	a = append(a, "-p", "tcp")
	if r.chunk != "" {
		a = append(a, "-m", "multiport", "--dports", r.chunk)
	}
	if r.src.IsValid() && r.until > 0 {
		// xt_time stops matching at the expiry (UTC), so a ban ends on
		// time even while mailguard is down; the sweeper only tidies.
		a = append(a, "-m", "time", "--datestop", time.Unix(r.until, 0).UTC().Format("2006-01-02T15:04:05"))
	}
	if r.set != "" {
		a = append(a, "-m", "set", "--match-set", r.set, "src")
	}
	return append(a, "-m", "comment", "--comment", r.comment(), "-j", "DROP")
}

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

// rulesFor returns the rules entry e needs in rule-per-ban mode.
func rulesFor(e Entry) []iptRule {
	var until int64
	if !e.Expires.IsZero() {
		until = e.Expires.Unix()
		if e.Expires.Nanosecond() > 0 {
			until++
		}
	}
	var out []iptRule
	for _, c := range chunks(e.Ports) {
		out = append(out, iptRule{src: e.Prefix, ports: e.Ports, chunk: c, until: until})
	}
	return out
}

// setRules returns the rules a set of the group needs in ipset mode.
func setRules(v6 bool, ports []uint16) []iptRule {
	var out []iptRule
	for _, c := range chunks(ports) {
		out = append(out, iptRule{set: setName(v6, ports), ports: ports, chunk: c})
	}
	return out
}

// listRules parses the MAILGUARD chain of one family. A missing chain is
// empty. Rules that are not ours in form are returned with only spec set, so
// that Sync deletes them.
func listRules(ipt *iptables.IPTables) ([]iptRule, error) {
	ok, err := ipt.ChainExists(iptTable, iptChain)
	if err != nil || !ok {
		return nil, err
	}
	lines, err := ipt.List(iptTable, iptChain)
	if err != nil {
		return nil, err
	}
	var out []iptRule
	for _, l := range lines {
		f := splitQuoted(l)
		if len(f) < 2 || f[0] != "-A" || f[1] != iptChain {
			continue
		}
		out = append(out, parseRule(f[2:]))
	}
	return out, nil
}

func parseRule(spec []string) iptRule {
	r := iptRule{spec: spec}
	var comment string
	for i := 0; i+1 < len(spec); i++ {
		switch spec[i] {
		case "-s":
			p, err := netip.ParsePrefix(spec[i+1])
			if err != nil {
				return iptRule{spec: spec}
			}
			r.src = p
		case "--dports":
			r.chunk = spec[i+1]
		case "--match-set":
			r.set = spec[i+1]
		case "--comment":
			comment = spec[i+1]
		}
	}
	for f := range strings.SplitSeq(comment, ":") {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "ports":
			r.ports, _ = parsePortsKey(v)
		case "until":
			r.until, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if !strings.HasPrefix(comment, "mailguard:ports=") {
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

// kstate is what the kernel holds: entries, each in a rule or in a set.
type kstate struct {
	rules    [2][]iptRule              // by family
	setPorts map[string][]uint16       // our sets referenced by rules
	entries  map[entryKey]Entry        // every ban
	inRule   map[entryKey]bool         // held by a rule (else by a set)
	members  map[string][]netip.Prefix // set name → members, for deletion
	sets     []string                  // our sets that exist
}

// state reads the chains and sets; the sets' members only if members is set
// (a dump of every ban). Called on the namespace thread.
func (b *IPTables) state(members bool) (*kstate, error) {
	h := &kstate{setPorts: map[string][]uint16{}, entries: map[entryKey]Entry{}, inRule: map[entryKey]bool{}, members: map[string][]netip.Prefix{}}
	nowUnix := b.now().Unix()
	for i, ipt := range b.fams {
		rs, err := listRules(ipt)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", iptChain, err)
		}
		h.rules[i] = rs
		for _, r := range rs {
			switch {
			case r.src.IsValid() && r.until > 0 && r.until <= nowUnix:
				// expired: no longer matches, the sweeper deletes it
			case r.src.IsValid():
				e := Entry{Prefix: r.src, Ports: r.ports}
				if r.until > 0 {
					e.Expires = time.Unix(r.until, 0)
				}
				h.entries[e.key()] = e
				h.inRule[e.key()] = true
			case r.set != "":
				h.setPorts[r.set] = r.ports
			}
		}
	}
	if b.ipset == "" {
		return h, nil
	}
	if !members {
		out, err := b.ipsetCmd(nil, "list", "-n")
		if err != nil {
			return nil, err
		}
		for _, name := range strings.Fields(string(out)) {
			if isOurSet(name) {
				h.sets = append(h.sets, name)
			}
		}
		b.noteReady(h)
		return h, nil
	}
	defer b.noteReady(h)
	out, err := b.ipsetCmd(nil, "save")
	if err != nil {
		return nil, err
	}
	now := b.now()
	for l := range strings.Lines(string(out)) {
		f := strings.Fields(l)
		if len(f) < 2 || !isOurSet(f[1]) {
			continue
		}
		switch f[0] {
		case "create":
			h.sets = append(h.sets, f[1])
		case "add":
			if len(f) < 3 {
				continue
			}
			p, err := netip.ParsePrefix(f[2])
			if err != nil {
				a, err := netip.ParseAddr(f[2])
				if err != nil {
					continue
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			h.members[f[1]] = append(h.members[f[1]], p)
			ports, ok := h.setPorts[f[1]]
			if !ok {
				continue // a set no rule uses: bans nothing
			}
			e := Entry{Prefix: p, Ports: ports}
			for i := 3; i+1 < len(f); i++ {
				if f[i] == "timeout" {
					if s, err := strconv.Atoi(f[i+1]); err == nil && s > 0 {
						e.Expires = now.Add(time.Duration(s) * time.Second)
					}
				}
			}
			if _, ok := h.entries[e.key()]; !ok {
				h.entries[e.key()] = e
			}
		}
	}
	return h, nil
}

// noteReady records the sets that exist and have their rules.
func (b *IPTables) noteReady(h *kstate) {
	clear(b.ready)
	for _, s := range h.sets {
		if _, ok := h.setPorts[s]; ok {
			b.ready[s] = true
		}
	}
}

// quick applies adds or deletes to ready sets in one `ipset restore`; ok is
// false when a set is not known ready (the caller takes the slow path).
func (b *IPTables) quick(es map[entryKey]Entry, del bool, now time.Time) (ok bool, err error) {
	if b.ipset == "" {
		return false, nil
	}
	var script bytes.Buffer
	for _, e := range es {
		name := setName(e.Prefix.Addr().Is6(), e.Ports)
		if !b.ready[name] {
			return false, nil
		}
		if del {
			fmt.Fprintf(&script, "del %s %s\n", name, e.Prefix)
		} else {
			fmt.Fprintf(&script, "add %s %s timeout %s\n", name, e.Prefix, ipsetTimeout(e, now))
		}
	}
	if _, err := b.ipsetCmd(script.Bytes(), "restore", "-exist"); err != nil {
		clear(b.ready) // a set was destroyed by hand? look next time
		return true, err
	}
	return true, nil
}

func (b *IPTables) ipsetCmd(stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.Command(b.ipset, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ipset %s: %w: %s", args[0], err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

func famIndex(p netip.Prefix) int {
	if p.Addr().Is6() {
		return 1
	}
	return 0
}

// plan is a change of the chains and sets, applied in order: new sets,
// rules added, set members changed, rules deleted, sets destroyed.
type plan struct {
	createSets []string
	addRules   [2][]iptRule
	restore    bytes.Buffer // ipset restore script: add/del lines
	delRules   [2][]iptRule
	destroy    []string
}

func (b *IPTables) exec(p *plan) error {
	var errs []error
	for _, s := range p.createSets {
		fam := "inet"
		if strings.HasPrefix(s, "mailguard6-") {
			fam = "inet6"
		}
		if _, err := b.ipsetCmd(nil, "create", s, "hash:net", "family", fam, "timeout", "0",
			"maxelem", strconv.Itoa(ipsetMax), "-exist"); err != nil {
			return err
		}
	}
	for i, ipt := range b.fams {
		for _, r := range p.addRules[i] {
			if err := ipt.Append(iptTable, iptChain, r.args()...); err != nil {
				return fmt.Errorf("append rule: %w", err)
			}
		}
	}
	if p.restore.Len() > 0 {
		if _, err := b.ipsetCmd(p.restore.Bytes(), "restore", "-exist"); err != nil {
			return err
		}
	}
	for i, ipt := range b.fams {
		for _, r := range p.delRules[i] {
			if err := ipt.DeleteIfExists(iptTable, iptChain, r.spec...); err != nil {
				errs = append(errs, fmt.Errorf("delete rule: %w", err))
			}
		}
	}
	for _, s := range p.destroy {
		if _, err := b.ipsetCmd(nil, "destroy", s); err != nil {
			errs = append(errs, err)
		}
		delete(b.ready, s)
	}
	for i := range p.addRules {
		for _, r := range p.addRules[i] {
			if r.set != "" {
				b.ready[r.set] = true
			}
		}
	}
	return errors.Join(errs...)
}

func ipsetTimeout(e Entry, now time.Time) string {
	if e.Expires.IsZero() {
		return "0"
	}
	d := min(e.Expires.Sub(now), ipsetMaxTimeout)
	return strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10)
}

// change plans adding (or renewing) add and lifting del, given h.
func (b *IPTables) change(h *kstate, add, del map[entryKey]Entry, now time.Time) *plan {
	p := &plan{}
	existing := map[string]bool{}
	for _, s := range h.sets {
		existing[s] = true
	}
	if b.ipset == "" {
		present := map[string]iptRule{}
		for i := range h.rules {
			for _, r := range h.rules[i] {
				present[r.id()] = r
			}
		}
		for _, e := range add {
			for _, r := range rulesFor(e) {
				if _, ok := present[r.id()]; !ok {
					p.addRules[famIndex(e.Prefix)] = append(p.addRules[famIndex(e.Prefix)], r)
				}
			}
		}
	} else {
		for _, e := range add {
			v6 := e.Prefix.Addr().Is6()
			name := setName(v6, e.Ports)
			if !existing[name] {
				p.createSets = append(p.createSets, name)
				existing[name] = true
			}
			if _, ok := h.setPorts[name]; !ok {
				p.addRules[famIndex(e.Prefix)] = append(p.addRules[famIndex(e.Prefix)], setRules(v6, e.Ports)...)
				h.setPorts[name] = e.Ports
			}
			fmt.Fprintf(&p.restore, "add %s %s timeout %s\n", name, e.Prefix, ipsetTimeout(e, now))
		}
	}
	// Renewed or lifted entries held by a rule lose their old rules;
	// lifted entries held by a set leave it.
	for i := range h.rules {
		for _, r := range h.rules[i] {
			if !r.src.IsValid() {
				continue
			}
			k := entryKey{r.src, portsKey(r.ports)}
			_, d := del[k]
			if e, a := add[k]; d || a && (b.ipset != "" || !slices.ContainsFunc(rulesFor(e), func(n iptRule) bool { return n.id() == r.id() })) {
				p.delRules[i] = append(p.delRules[i], r)
			}
		}
	}
	if b.ipset != "" {
		for _, e := range del {
			name := setName(e.Prefix.Addr().Is6(), e.Ports)
			if existing[name] {
				fmt.Fprintf(&p.restore, "del %s %s\n", name, e.Prefix)
			}
		}
	}
	return p
}

// Add bans entries, renewing those already held.
func (b *IPTables) Add(ctx context.Context, entries []Entry) error {
	now := b.now()
	add, perr := prepare(entries, now)
	if len(add) == 0 {
		return perr
	}
	err := b.run(func() error {
		if ok, err := b.quick(add, false, now); ok {
			return err
		}
		h, err := b.state(false)
		if err != nil {
			return err
		}
		return b.exec(b.change(h, add, nil, now))
	})
	if err != nil {
		return errors.Join(perr, fmt.Errorf("iptables: add: %w", err))
	}
	return perr
}

// Remove lifts entries. Entries not held are ignored.
func (b *IPTables) Remove(ctx context.Context, entries []Entry) error {
	del, perr := prepare(entries, time.Time{})
	if len(del) == 0 {
		return perr
	}
	err := b.run(func() error {
		if ok, err := b.quick(del, true, time.Time{}); ok {
			return err
		}
		h, err := b.state(false)
		if err != nil {
			return err
		}
		return b.exec(b.change(h, nil, del, b.now()))
	})
	if err != nil {
		return errors.Join(perr, fmt.Errorf("iptables: remove: %w", err))
	}
	return perr
}

// Sync makes the kernel hold exactly entries: it re-creates the chains and
// jumps if they were removed, adds and renews bans, deletes the others and
// the rules and sets no ban needs.
func (b *IPTables) Sync(ctx context.Context, entries []Entry) error {
	now := b.now()
	want, perr := prepare(entries, now)
	err := b.run(func() error {
		if err := b.ensureChains(); err != nil {
			return err
		}
		h, err := b.state(true)
		if err != nil {
			return err
		}
		add, del := map[entryKey]Entry{}, map[entryKey]Entry{}
		for k, e := range want {
			have, ok := h.entries[k]
			if !ok || h.inRule[k] != (b.ipset == "") || !b.sameExpiry(have.Expires, e.Expires, now) {
				add[k] = e
			}
		}
		for k, e := range h.entries {
			if _, ok := want[k]; !ok {
				del[k] = e
			}
		}
		visible := maps.Clone(h.setPorts) // change adds the groups it gives rules
		p := b.change(h, add, del, now)
		h.setPorts = visible
		// Rules and sets that no wanted entry needs go, and so do rules
		// that are not ours in form.
		need := map[string]bool{}
		if b.ipset != "" {
			for _, e := range want {
				for _, r := range setRules(e.Prefix.Addr().Is6(), e.Ports) {
					need[r.id()] = true
				}
			}
		}
		for i := range h.rules {
			for _, r := range h.rules[i] {
				if r.src.IsValid() {
					continue // handled by change
				}
				if !need[r.id()] {
					p.delRules[i] = append(p.delRules[i], r)
				}
			}
		}
		needSet := map[string]bool{}
		if b.ipset != "" {
			for _, e := range want {
				needSet[setName(e.Prefix.Addr().Is6(), e.Ports)] = true
			}
		}
		for _, s := range h.sets {
			if !needSet[s] {
				p.destroy = append(p.destroy, s)
			}
		}
		// Members of wanted sets whose rules were deleted by hand were
		// not in h.entries: drop the unwanted ones.
		wantIn := map[string]bool{}
		for _, e := range want {
			wantIn[setName(e.Prefix.Addr().Is6(), e.Ports)+" "+e.Prefix.String()] = true
		}
		for _, name := range slices.Sorted(maps.Keys(h.members)) {
			if _, visible := h.setPorts[name]; visible || !needSet[name] {
				continue
			}
			for _, m := range h.members[name] {
				if !wantIn[name+" "+m.String()] {
					fmt.Fprintf(&p.restore, "del %s %s\n", name, m)
				}
			}
		}
		return b.exec(p)
	})
	if err != nil {
		return errors.Join(perr, fmt.Errorf("iptables: sync: %w", err))
	}
	return perr
}

// sameExpiry compares a held expiry with a wanted one; ipset timeouts are
// capped, so a long ban is renewed only when its kernel expiry comes closer
// than half the cap.
func (b *IPTables) sameExpiry(have, want, now time.Time) bool {
	if b.ipset != "" && !want.IsZero() && want.Sub(now) > ipsetMaxTimeout && !have.IsZero() {
		return have.Sub(now) > ipsetMaxTimeout/2
	}
	return sameExpiry(have, want)
}

// List returns the bans the kernel holds.
func (b *IPTables) List(ctx context.Context) ([]Entry, error) {
	var out []Entry
	err := b.run(func() error {
		h, err := b.state(true)
		if err != nil {
			return err
		}
		for _, e := range h.entries {
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("iptables: list: %w", err)
	}
	sortEntries(out)
	return out, nil
}

// sweep deletes expired rule-per-ban rules every interval until Close.
func (b *IPTables) sweep(every time.Duration) {
	defer close(b.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		n := 0
		err := b.run(func() error {
			now := b.now().Unix()
			var errs []error
			for _, ipt := range b.fams {
				rs, err := listRules(ipt)
				if err != nil {
					return err
				}
				for _, r := range rs {
					if r.src.IsValid() && r.until > 0 && r.until <= now {
						if err := ipt.DeleteIfExists(iptTable, iptChain, r.spec...); err != nil {
							errs = append(errs, err)
						}
						n++
					}
				}
			}
			return errors.Join(errs...)
		})
		if err != nil {
			b.log.Warn("iptables: sweeping expired bans", "err", err)
		} else if n > 0 {
			b.log.Debug("iptables: swept expired bans", "count", n)
		}
	}
}

// Flush deletes the jumps from INPUT, the MAILGUARD chains and the
// mailguard ipsets.
func (b *IPTables) Flush(ctx context.Context) error {
	err := b.run(func() error {
		clear(b.ready)
		for _, ipt := range b.fams {
			ok, err := ipt.ChainExists(iptTable, iptChain)
			if err != nil {
				return err
			}
			if ok {
				if err := ipt.DeleteIfExists(iptTable, "INPUT", iptJump...); err != nil {
					return fmt.Errorf("delete jump: %w", err)
				}
				if err := ipt.ClearAndDeleteChain(iptTable, iptChain); err != nil {
					return fmt.Errorf("delete chain: %w", err)
				}
			}
		}
		ipset := b.ipset
		if ipset == "" {
			ipset, _ = exec.LookPath("ipset") // sets left from ipset mode
		}
		if ipset == "" {
			return nil
		}
		out, err := exec.Command(ipset, "list", "-n").Output()
		if err != nil {
			return fmt.Errorf("ipset list: %w", err)
		}
		for _, name := range strings.Fields(string(out)) {
			if isOurSet(name) {
				if out, err := exec.Command(ipset, "destroy", name).CombinedOutput(); err != nil {
					return fmt.Errorf("ipset destroy %s: %w: %s", name, err, bytes.TrimSpace(out))
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("iptables: flush: %w", err)
	}
	return nil
}

// Close stops the sweeper and the namespace thread. The rules and sets stay.
func (b *IPTables) Close() error {
	if b.stop != nil {
		close(b.stop)
		<-b.done
		b.stop = nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		b.ns.stop()
	}
	return nil
}
