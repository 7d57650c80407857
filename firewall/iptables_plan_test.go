package firewall

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// The plan tests check the iptables backend's decisions without root: what
// it does for a given kernel state and wanted bans.

var (
	planNow   = time.Unix(1_800_000_000, 0)
	planPorts = []uint16{25, 465, 587}
	set4      = setName(false, planPorts)
	set6      = setName(true, planPorts)
	rule4     = "rule 4 " + set4 + "|25_465_587|25,465,587"
	rule6     = "rule 6 " + set6 + "|25_465_587|25,465,587"
)

// held returns the kernel as a Sync of es left it, both families.
func held(es ...Entry) iptState {
	h := iptState{chain: [2]bool{true, true}, jump: [2]bool{true, true}, sets: map[string][]member{}}
	for _, e := range es {
		f := famIndex(e.Prefix)
		name := setOf(e)
		if _, ok := h.sets[name]; !ok {
			for _, r := range setRules(f == 1, e.Ports) {
				r.spec = r.args()
				h.rules[f] = append(h.rules[f], r)
			}
		}
		h.sets[name] = append(h.sets[name], member{prefix: e.Prefix, timeout: e.Expires.Sub(planNow)})
	}
	return h
}

func wantMap(es ...Entry) map[entryKey]Entry {
	m, err := prepare(es, planNow)
	if err != nil {
		panic(err)
	}
	return m
}

func ban(p string, d time.Duration) Entry {
	return Entry{Prefix: pfx(p), Ports: planPorts, Expires: planNow.Add(d)}
}

func TestPlanSync(t *testing.T) {
	a, b6 := ban("192.0.2.7/32", time.Hour), ban("2001:db8::/64", time.Hour)
	for _, tc := range []struct {
		name  string
		have  func() iptState
		want  []Entry
		lines []string
	}{
		{"empty kernel", func() iptState { return iptState{sets: map[string][]member{}} }, []Entry{a},
			[]string{"chain 4", "chain 6", "create " + set4, rule4, "jump 4", "jump 6", "add " + set4 + " 192.0.2.7/32 timeout 3600"}},
		{"in step", func() iptState { return held(a, b6) }, []Entry{a, b6}, nil},
		{"expiry drifted", func() iptState { return held(ban("192.0.2.7/32", 10*time.Minute)) }, []Entry{a},
			[]string{"add " + set4 + " 192.0.2.7/32 timeout 3600"}},
		{"expiry within tolerance", func() iptState { return held(ban("192.0.2.7/32", time.Hour-time.Second)) }, []Entry{a}, nil},
		{"longer than ipset takes, far from its end", func() iptState {
			return held(ban("192.0.2.7/32", ipsetMaxTimeout))
		}, []Entry{ban("192.0.2.7/32", 100*24*time.Hour)}, nil},
		{"jump deleted by hand", func() iptState { h := held(a); h.jump[0] = false; return h }, []Entry{a}, []string{"jump 4"}},
		{"chain deleted by hand", func() iptState {
			h := held(a, b6)
			h.chain[1], h.jump[1], h.rules[1] = false, false, nil
			return h
		}, []Entry{a, b6}, []string{"chain 6", rule6, "jump 6"}},
		{"set destroyed by hand (its rules first)", func() iptState {
			h := held(a)
			delete(h.sets, set4)
			h.rules[0] = nil
			return h
		}, []Entry{a}, []string{"create " + set4, rule4, "add " + set4 + " 192.0.2.7/32 timeout 3600"}},
		{"set flushed by hand", func() iptState { h := held(a); h.sets[set4] = nil; return h }, []Entry{a},
			[]string{"add " + set4 + " 192.0.2.7/32 timeout 3600"}},
		{"unbanned while down", func() iptState { return held(a, ban("192.0.2.8/32", time.Hour)) }, []Entry{a},
			[]string{"del " + set4 + " 192.0.2.8/32"}},
		{"nothing wanted: rules and sets go", func() iptState { return held(a) }, nil,
			[]string{"delete 4 " + strings.Join(iptRule{set: set4, ports: planPorts, chunk: "25,465,587"}.args(), " "), "destroy " + set4}},
		{"foreign, duplicate and old rule-per-ban rules go", func() iptState {
			h := held(a)
			dup := h.rules[0][0]
			h.rules[0] = append(h.rules[0], dup,
				parseRule(splitQuoted(`-s 10.0.0.1/32 -j ACCEPT`)),
				parseRule(splitQuoted(`-s 192.0.2.9/32 -p tcp -m comment --comment "mailguard:ports=25:until=1" -j DROP`)))
			return h
		}, []Entry{a}, []string{
			"delete 4 " + strings.Join(iptRule{set: set4, ports: planPorts, chunk: "25,465,587"}.args(), " "),
			"delete 4 -s 10.0.0.1/32 -j ACCEPT",
			"delete 4 -s 192.0.2.9/32 -p tcp -m comment --comment mailguard:ports=25:until=1 -j DROP",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planSync(tc.have(), wantMap(tc.want...), planNow).lines()
			if !slices.Equal(got, tc.lines) {
				t.Errorf("planSync =\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(tc.lines, "\n\t"))
			}
		})
	}
}

func TestPlanAddRemove(t *testing.T) {
	a := ban("192.0.2.7/32", time.Hour)
	many := Entry{Prefix: pfx("2001:db8::1/128"), Ports: make33()[:20], Expires: planNow.Add(90 * time.Second)}
	set20 := setName(true, many.Ports)
	for _, tc := range []struct {
		name  string
		got   iptOps
		lines []string
	}{
		{"add to a ready set", planAdd(held(a), wantMap(a), planNow), []string{"add " + set4 + " 192.0.2.7/32 timeout 3600"}},
		{"add a new port group: 20 ports are two rules", planAdd(held(a), wantMap(many), planNow), []string{
			"create " + set20,
			"rule 6 " + set20 + "|" + portsKey(many.Ports) + "|1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
			"rule 6 " + set20 + "|" + portsKey(many.Ports) + "|16,17,18,19,20",
			"add " + set20 + " 2001:db8::1/128 timeout 90"}},
		{"add repairs a missing jump", planAdd(func() iptState { h := held(a); h.jump[0] = false; return h }(), wantMap(a), planNow),
			[]string{"jump 4", "add " + set4 + " 192.0.2.7/32 timeout 3600"}},
		{"remove", planRemove(held(a), wantMap(a)), []string{"del " + set4 + " 192.0.2.7/32"}},
		{"remove from a set that does not exist", planRemove(held(), wantMap(a)), nil},
	} {
		if got := tc.got.lines(); !slices.Equal(got, tc.lines) {
			t.Errorf("%s:\n\t%s\nwant\n\t%s", tc.name, strings.Join(got, "\n\t"), strings.Join(tc.lines, "\n\t"))
		}
	}
}

func TestParseSave(t *testing.T) {
	out := `create other hash:ip family inet hashsize 1024 maxelem 65536
add other 10.0.0.1
create mailguard4-0a0b0c0d hash:net family inet hashsize 1024 maxelem 1048576 timeout 0
add mailguard4-0a0b0c0d 192.0.2.7 timeout 3599
add mailguard4-0a0b0c0d 198.51.100.0/24 timeout 0
create mailguard6-0a0b0c0d hash:net family inet6 hashsize 1024 maxelem 1048576 timeout 0
add mailguard6-0a0b0c0d garbage timeout 5
`
	got := parseSave(out)
	want := map[string][]member{
		"mailguard4-0a0b0c0d": {{pfx("192.0.2.7/32"), 3599 * time.Second}, {pfx("198.51.100.0/24"), 0}},
		"mailguard6-0a0b0c0d": nil,
	}
	if len(got) != len(want) {
		t.Fatalf("parseSave = %v, want %v", got, want)
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || !slices.Equal(g, w) {
			t.Errorf("parseSave: %s = %v, want %v", k, g, w)
		}
	}
}

func TestIPSetTimeout(t *testing.T) {
	for _, tc := range []struct {
		exp  time.Time
		want int64
	}{
		{time.Time{}, 0},
		{planNow.Add(1500 * time.Millisecond), 2},
		{planNow.Add(time.Millisecond), 1},
		{planNow.Add(1000 * 24 * time.Hour), int64(ipsetMaxTimeout / time.Second)},
	} {
		if got := ipsetTimeout(Entry{Expires: tc.exp}, planNow); got != tc.want {
			t.Errorf("ipsetTimeout(%v) = %d, want %d", tc.exp, got, tc.want)
		}
	}
}
