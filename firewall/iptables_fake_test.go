package firewall

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeIPT is one family of iptables in memory: chains of rules, each rule
// its arguments joined by spaces.
type fakeIPT struct {
	chains map[string][]string // "filter/INPUT" → rules
	calls  int
}

func newFakeIPT() *fakeIPT {
	return &fakeIPT{chains: map[string][]string{"filter/INPUT": nil}}
}

func (f *fakeIPT) chain(table, chain string) (string, error) {
	f.calls++
	k := table + "/" + chain
	if _, ok := f.chains[k]; !ok {
		return k, fmt.Errorf("fake iptables: no chain %s", k)
	}
	return k, nil
}

func (f *fakeIPT) ChainExists(table, chain string) (bool, error) {
	_, err := f.chain(table, chain)
	return err == nil, nil
}

func (f *fakeIPT) NewChain(table, chain string) error {
	if _, err := f.chain(table, chain); err == nil {
		return fmt.Errorf("fake iptables: chain %s exists", chain)
	}
	f.chains[table+"/"+chain] = nil
	return nil
}

func (f *fakeIPT) Exists(table, chain string, spec ...string) (bool, error) {
	k, err := f.chain(table, chain)
	if err != nil {
		return false, err
	}
	return slices.Contains(f.chains[k], strings.Join(spec, " ")), nil
}

func (f *fakeIPT) Insert(table, chain string, pos int, spec ...string) error {
	k, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	f.chains[k] = slices.Insert(f.chains[k], pos-1, strings.Join(spec, " "))
	return nil
}

func (f *fakeIPT) Append(table, chain string, spec ...string) error {
	k, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	f.chains[k] = append(f.chains[k], strings.Join(spec, " "))
	return nil
}

func (f *fakeIPT) DeleteIfExists(table, chain string, spec ...string) error {
	k, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	if i := slices.Index(f.chains[k], strings.Join(spec, " ")); i >= 0 {
		f.chains[k] = slices.Delete(f.chains[k], i, i+1)
	}
	return nil
}

// List renders the chain as `iptables -S` does, quoting the comment.
func (f *fakeIPT) List(table, chain string) ([]string, error) {
	k, err := f.chain(table, chain)
	if err != nil {
		return nil, err
	}
	out := []string{"-N " + chain}
	for _, r := range f.chains[k] {
		a := strings.Fields(r)
		for i := range a {
			if i > 0 && a[i-1] == "--comment" {
				a[i] = `"` + a[i] + `"`
			}
		}
		out = append(out, "-A "+chain+" "+strings.Join(a, " "))
	}
	return out, nil
}

func (f *fakeIPT) ClearAndDeleteChain(table, chain string) error {
	delete(f.chains, table+"/"+chain)
	return nil
}

// fakeIPSet is the ipset program in memory; its members keep their
// expiry, read against now.
type fakeIPSet struct {
	sets  map[string]map[string]time.Time // name → prefix → expiry (zero: none)
	now   func() time.Time
	calls int
}

func (s *fakeIPSet) names(context.Context) ([]string, error) {
	s.calls++
	return slices.Sorted(maps.Keys(s.sets)), nil
}

func (s *fakeIPSet) save(ctx context.Context) (map[string][]member, error) {
	s.calls++
	out := map[string][]member{}
	for name, ms := range s.sets {
		out[name] = nil
		for p, exp := range ms {
			m := member{prefix: pfx(p)}
			if !exp.IsZero() {
				m.timeout = exp.Sub(s.now()).Truncate(time.Second)
			}
			out[name] = append(out[name], m)
		}
	}
	return out, nil
}

func (s *fakeIPSet) create(ctx context.Context, name string, v6 bool) error {
	s.calls++
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, ok := s.sets[name]; !ok {
		s.sets[name] = map[string]time.Time{}
	}
	return nil
}

func (s *fakeIPSet) restore(ctx context.Context, ops []setOp) error {
	s.calls++
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, o := range ops {
		ms, ok := s.sets[o.set]
		if !ok {
			return fmt.Errorf("fake ipset: restore: no set %s", o.set)
		}
		if o.del {
			delete(ms, o.prefix.String())
			continue
		}
		var exp time.Time
		if o.timeout > 0 {
			exp = s.now().Add(time.Duration(o.timeout) * time.Second)
		}
		ms[o.prefix.String()] = exp
	}
	return nil
}

func (s *fakeIPSet) destroy(ctx context.Context, name string) error {
	s.calls++
	delete(s.sets, name)
	return nil
}

type fakeKernel struct {
	ipt   [2]*fakeIPT
	ipset *fakeIPSet
	b     *IPTables
}

func newFakeKernel(t *testing.T) *fakeKernel {
	now := func() time.Time { return planNow }
	k := &fakeKernel{ipt: [2]*fakeIPT{newFakeIPT(), newFakeIPT()}, ipset: &fakeIPSet{sets: map[string]map[string]time.Time{}, now: now}}
	k.b = newIPTablesWith([2]iptFamily{k.ipt[0], k.ipt[1]}, k.ipset, Options{Now: now, Log: testLog(t)})
	if err := k.b.setup(context.Background()); err != nil {
		t.Fatalf("setup: %v", err)
	}
	return k
}

// drops reports whether the fake kernel drops new connections from the
// entry's prefix on its ports: INPUT jumps to MAILGUARD, a rule there
// matches the entry's set, and the set holds the prefix.
func (k *fakeKernel) drops(e Entry) bool {
	ipt := k.ipt[famIndex(e.Prefix)]
	if !slices.Contains(ipt.chains["filter/INPUT"], strings.Join(iptJump, " ")) {
		return false
	}
	name := setOf(e)
	if !slices.ContainsFunc(ipt.chains["filter/"+iptChain], func(r string) bool { return strings.Contains(r, "--match-set "+name+" ") }) {
		return false
	}
	_, ok := k.ipset.sets[name][e.Prefix.String()]
	return ok
}

// TestIPTablesFakeRepair runs the backend against the fakes: bans reach the
// kernel, a Sync repairs what was deleted by hand, and an Add repairs a set
// destroyed by hand on its own.
func TestIPTablesFakeRepair(t *testing.T) {
	ctx := context.Background()
	k := newFakeKernel(t)
	a, b6 := ban("192.0.2.7/32", time.Hour), ban("2001:db8::/64", time.Hour)
	if err := k.b.Add(ctx, []Entry{a, b6}); err != nil {
		t.Fatal(err)
	}
	if !k.drops(a) || !k.drops(b6) {
		t.Fatalf("after Add: drops %v %v, want both", k.drops(a), k.drops(b6))
	}
	// Another Add to the same sets is one ipset run, no iptables call.
	calls := k.ipt[0].calls + k.ipt[1].calls
	if err := k.b.Add(ctx, []Entry{ban("192.0.2.8/32", time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if got := k.ipt[0].calls + k.ipt[1].calls; got != calls {
		t.Errorf("Add to a ready set ran iptables %d times, want none", got-calls)
	}

	for _, tc := range []struct {
		name    string
		breakIt func()
	}{
		{"jump deleted", func() { k.ipt[0].chains["filter/INPUT"] = nil }},
		{"chain deleted", func() {
			k.ipt[1].chains["filter/INPUT"] = nil
			delete(k.ipt[1].chains, "filter/"+iptChain)
		}},
		{"ipset destroyed", func() {
			k.ipt[0].chains["filter/"+iptChain] = nil
			delete(k.ipset.sets, set4)
		}},
	} {
		tc.breakIt()
		if k.drops(a) && k.drops(b6) {
			t.Fatalf("%s: the fake still drops both", tc.name)
		}
		if err := k.b.Sync(ctx, []Entry{a, b6}); err != nil {
			t.Fatalf("%s: Sync: %v", tc.name, err)
		}
		if !k.drops(a) || !k.drops(b6) {
			t.Errorf("%s: after Sync drops %v %v, want both", tc.name, k.drops(a), k.drops(b6))
		}
	}
	if got := len(k.ipset.sets[set4]); got != 1 {
		t.Errorf("after Sync: %s holds %d members, want 1 (192.0.2.8 was not wanted)", set4, got)
	}

	// A set destroyed while the backend thinks it ready: Add notices and
	// rebuilds it without waiting for a Sync.
	k.ipt[0].chains["filter/"+iptChain] = nil
	delete(k.ipset.sets, set4)
	if err := k.b.Add(ctx, []Entry{a}); err != nil {
		t.Fatalf("Add after a set was destroyed: %v", err)
	}
	if !k.drops(a) {
		t.Errorf("Add after a set was destroyed: not dropped")
	}

	got, err := k.b.List(ctx)
	if err != nil || len(got) != 2 || got[0].Prefix != a.Prefix || !sameExpiry(got[0].Expires, a.Expires) {
		t.Errorf("List = %v, %v; want %v and %v", got, err, a, b6)
	}
	if err := k.b.Remove(ctx, []Entry{a}); err != nil || k.drops(a) {
		t.Errorf("Remove: %v, still dropped %v", err, k.drops(a))
	}
	if err := k.b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(k.ipset.sets) != 0 || len(k.ipt[0].chains) != 1 || len(k.ipt[1].chains) != 1 || len(k.ipt[0].chains["filter/INPUT"]) != 0 {
		t.Errorf("after Flush: sets %v, chains %v %v", k.ipset.sets, k.ipt[0].chains, k.ipt[1].chains)
	}
}

func TestIPTablesFakeContextAndClose(t *testing.T) {
	k := newFakeKernel(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := k.ipset.calls
	if err := k.b.Add(ctx, []Entry{ban("192.0.2.7/32", time.Hour)}); !errors.Is(err, context.Canceled) {
		t.Errorf("Add with a canceled context = %v, want context.Canceled", err)
	}
	if err := k.b.Sync(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Sync with a canceled context = %v, want context.Canceled", err)
	}
	if k.ipset.calls != calls {
		t.Errorf("a canceled context still ran ipset %d times", k.ipset.calls-calls)
	}
	for range 2 {
		if err := k.b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if err := k.b.Add(context.Background(), []Entry{ban("192.0.2.7/32", time.Hour)}); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Close = %v, want ErrClosed", err)
	}
}
