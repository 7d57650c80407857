package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// iptFamily is what the backend needs of iptables for one address family;
// *iptables.IPTables (go-iptables) has it, the tests use an in-memory fake.
// go-iptables takes no context: each call is one short iptables run (bounded
// by its -w lock wait), and the backend checks the context between calls.
type iptFamily interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	DeleteIfExists(table, chain string, rulespec ...string) error
	List(table, chain string) ([]string, error)
	ClearAndDeleteChain(table, chain string) error
}

// ipsetter is what the backend needs of the ipset program; ipsetProg (in
// ipset.go) runs it, the tests use an in-memory fake. Only sets named
// mailguard4-* and mailguard6-* are ever read or touched.
type ipsetter interface {
	// names returns our sets that exist.
	names(ctx context.Context) ([]string, error)
	// save returns our sets that exist, with their members.
	save(ctx context.Context) (map[string][]member, error)
	// create makes a hash:net set with timeouts, unless it exists.
	create(ctx context.Context, name string, v6 bool) error
	// restore applies ops in one run: adding a member already held
	// renews its timeout, deleting one not held is no error.
	restore(ctx context.Context, ops []setOp) error
	// destroy removes a set and its members.
	destroy(ctx context.Context, name string) error
}

// IPTables is the iptables backend. It owns the chain MAILGUARD in the filter
// tables of iptables and ip6tables, its jump from INPUT and the ipsets named
// mailguard4-* and mailguard6-*, and touches nothing else.
type IPTables struct {
	mu     sync.Mutex
	fams   [2]iptFamily // IPv4, IPv6
	ipset  ipsetter
	now    func() time.Time
	log    *slog.Logger
	closed bool
	// ready holds the sets known to drop packets as they are (see
	// iptState.ready): Add and Remove on them are one `ipset restore`.
	ready map[string]bool
}

// NewIPTables opens the iptables backend and creates its chains, the jumps to
// them and the sets and rules of nothing yet. It fails, naming the fix,
// without CAP_NET_ADMIN, without the iptables programs or without the ipset
// program.
func NewIPTables(ctx context.Context, o Options) (*IPTables, error) {
	return newIPTables(ctx, o, true)
}

func newIPTables(ctx context.Context, o Options, setup bool) (*IPTables, error) {
	o = o.withDefaults()
	if !hasNetAdmin() {
		return nil, explain(NameIPTables, errNoNetAdmin)
	}
	var fams [2]iptFamily
	for i, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(10))
		if err != nil {
			return nil, explain(NameIPTables, err)
		}
		fams[i] = ipt
	}
	path, err := exec.LookPath("ipset")
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", NameIPTables, err, hintNoIPSet)
	}
	b := newIPTablesWith(fams, ipsetProg{path: path}, o)
	if setup {
		if err := b.setup(ctx); err != nil {
			return nil, explain(NameIPTables, err)
		}
	}
	return b, nil
}

// newIPTablesWith returns a backend over the given seams, without touching
// the kernel.
func newIPTablesWith(fams [2]iptFamily, ipset ipsetter, o Options) *IPTables {
	o = o.withDefaults()
	return &IPTables{fams: fams, ipset: ipset, now: o.Now, log: o.Log, ready: map[string]bool{}}
}

// setup creates the chains and the jumps to them.
func (b *IPTables) setup(ctx context.Context) error {
	return b.locked(func() error {
		h, err := b.state(ctx, false)
		if err != nil {
			return err
		}
		var p iptOps
		p.ensure(h, nil)
		return b.apply(ctx, p)
	})
}

// locked runs fn holding b.mu, unless b is closed.
func (b *IPTables) locked(fn func() error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	return fn()
}

// state reads the chains, jumps and sets; the sets' members only if members
// is set (a dump of every ban). It also refreshes b.ready.
func (b *IPTables) state(ctx context.Context, members bool) (iptState, error) {
	h := iptState{sets: map[string][]member{}}
	for f, ipt := range b.fams {
		if err := ctx.Err(); err != nil {
			return h, err
		}
		ok, err := ipt.ChainExists(iptTable, iptChain)
		if err != nil {
			return h, fmt.Errorf("check chain %s: %w", iptChain, err)
		}
		h.chain[f] = ok
		if !ok {
			continue // and no jump: iptables cannot jump to a missing chain
		}
		if h.jump[f], err = ipt.Exists(iptTable, "INPUT", iptJump...); err != nil {
			return h, fmt.Errorf("check jump to %s: %w", iptChain, err)
		}
		lines, err := ipt.List(iptTable, iptChain)
		if err != nil {
			return h, fmt.Errorf("list %s: %w", iptChain, err)
		}
		for _, l := range lines {
			a := splitQuoted(l)
			if len(a) >= 2 && a[0] == "-A" && a[1] == iptChain {
				h.rules[f] = append(h.rules[f], parseRule(a[2:]))
			}
		}
	}
	if members {
		sets, err := b.ipset.save(ctx)
		if err != nil {
			return h, err
		}
		h.sets = sets
	} else {
		names, err := b.ipset.names(ctx)
		if err != nil {
			return h, err
		}
		for _, n := range names {
			h.sets[n] = nil
		}
	}
	b.ready = h.ready()
	return h, nil
}

// apply carries out p in its order (see iptOps). It stops at the first error
// of a step that later steps need; deletions are tried all.
func (b *IPTables) apply(ctx context.Context, p iptOps) error {
	for f, ipt := range b.fams {
		if !p.newChain[f] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := ipt.NewChain(iptTable, iptChain); err != nil {
			return fmt.Errorf("create chain %s: %w", iptChain, err)
		}
	}
	for _, s := range p.createSets {
		if err := b.ipset.create(ctx, s, s[len("mailguard")] == '6'); err != nil {
			return err
		}
	}
	for f, ipt := range b.fams {
		for _, r := range p.addRules[f] {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := ipt.Append(iptTable, iptChain, r.args()...); err != nil {
				return fmt.Errorf("append rule for %s: %w", r.set, err)
			}
		}
	}
	for f, ipt := range b.fams {
		if !p.addJump[f] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := ipt.Insert(iptTable, "INPUT", 1, iptJump...); err != nil {
			return fmt.Errorf("insert jump to %s: %w", iptChain, err)
		}
	}
	if len(p.members) > 0 {
		if err := b.ipset.restore(ctx, p.members); err != nil {
			return err
		}
	}
	var errs []error
	for f, ipt := range b.fams {
		for _, r := range p.delRules[f] {
			if err := ctx.Err(); err != nil {
				return errors.Join(append(errs, err)...)
			}
			if err := ipt.DeleteIfExists(iptTable, iptChain, r.spec...); err != nil {
				errs = append(errs, fmt.Errorf("delete rule: %w", err))
			}
		}
	}
	for _, s := range p.destroy {
		if err := b.ipset.destroy(ctx, s); err != nil {
			errs = append(errs, err)
		}
		delete(b.ready, s)
	}
	if len(errs) == 0 {
		// The sets this change gave rules (or that had them) now drop
		// packets: the chains and jumps exist.
		for f := range p.addRules {
			for _, r := range p.addRules[f] {
				b.ready[r.set] = true
			}
		}
	}
	return errors.Join(errs...)
}

// quick applies ops to ready sets in one `ipset restore`. ok is false when a
// set is not known ready, or the restore failed (a set destroyed by hand):
// the caller reads the kernel and plans.
func (b *IPTables) quick(ctx context.Context, ops []setOp) (ok bool) {
	for _, o := range ops {
		if !b.ready[o.set] {
			return false
		}
	}
	if err := b.ipset.restore(ctx, ops); err != nil {
		if ctx.Err() == nil {
			b.log.Warn("iptables: ipset changed behind our back, repairing", "err", err)
		}
		clear(b.ready)
		return false
	}
	return true
}

// Add bans entries, renewing those already held. A missing chain, jump, set
// or rule is created on the way.
func (b *IPTables) Add(ctx context.Context, entries []Entry) error {
	now := b.now()
	add, perr := prepare(entries, now)
	if len(add) == 0 {
		return perr
	}
	err := b.locked(func() error {
		if b.quick(ctx, planAdd(iptState{}, add, now).members) {
			return nil
		}
		h, err := b.state(ctx, false)
		if err != nil {
			return err
		}
		return b.apply(ctx, planAdd(h, add, now))
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
	err := b.locked(func() error {
		all := iptState{sets: map[string][]member{}}
		for _, e := range del {
			all.sets[setOf(e)] = nil
		}
		if b.quick(ctx, planRemove(all, del).members) {
			return nil
		}
		h, err := b.state(ctx, false)
		if err != nil {
			return err
		}
		return b.apply(ctx, planRemove(h, del))
	})
	if err != nil {
		return errors.Join(perr, fmt.Errorf("iptables: remove: %w", err))
	}
	return perr
}

// Sync makes the kernel hold exactly entries: it re-creates the chains,
// jumps, sets and rules if they were removed, adds and renews bans, deletes
// the others and the rules and sets no ban needs.
func (b *IPTables) Sync(ctx context.Context, entries []Entry) error {
	now := b.now()
	want, perr := prepare(entries, now)
	err := b.locked(func() error {
		h, err := b.state(ctx, true)
		if err != nil {
			return err
		}
		p := planSync(h, want, now)
		if repairs := p.repairs(); len(repairs) > 0 {
			// New port groups, unused sets, or a repair of a change by hand.
			b.log.Info("iptables: sync changes chains, jumps, sets or rules", "changes", strings.Join(repairs, "; "))
		}
		return b.apply(ctx, p)
	})
	if err != nil {
		return errors.Join(perr, fmt.Errorf("iptables: sync: %w", err))
	}
	return perr
}

// List returns the bans the kernel holds.
func (b *IPTables) List(ctx context.Context) ([]Entry, error) {
	var out []Entry
	err := b.locked(func() error {
		h, err := b.state(ctx, true)
		if err != nil {
			return err
		}
		out = slices.Collect(maps.Values(h.entries(b.now())))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("iptables: list: %w", err)
	}
	sortEntries(out)
	return out, nil
}

// Flush deletes the jumps from INPUT, the MAILGUARD chains and the
// mailguard ipsets.
func (b *IPTables) Flush(ctx context.Context) error {
	err := b.locked(func() error {
		clear(b.ready)
		for _, ipt := range b.fams {
			if err := ctx.Err(); err != nil {
				return err
			}
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
		names, err := b.ipset.names(ctx)
		if err != nil {
			return err
		}
		for _, name := range names {
			if err := b.ipset.destroy(ctx, name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("iptables: flush: %w", err)
	}
	return nil
}

// Close marks the backend closed: later calls return ErrClosed. The chains,
// sets and bans stay. Closing twice is no error.
func (b *IPTables) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	return nil
}
