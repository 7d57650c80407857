// Package firewall enforces bans in the kernel firewall of one node.
//
// A ban is an Entry: a network prefix, the TCP ports it may not open new
// connections to, and when it ends. Three backends implement Backend:
//
//   - nftables (nftables.go): the table "inet mailguard", spoken to over
//     netlink (google/nftables); per-element timeouts, one batch per change.
//   - iptables (iptables.go): the chain MAILGUARD in the filter table of
//     iptables and ip6tables (coreos/go-iptables), matching ipsets with
//     per-entry timeouts (the ipset program); the changes are planned by pure
//     functions (iptables_plan.go) from what the kernel holds.
//   - none (none.go): nothing; bans are refused in-protocol only.
//
// Every backend touches only what it created (its table, chains and sets),
// creates them when opened, and leaves them in place when closed: bans stay in
// force while mailguard is down, and the kernel expires them on time. Flush
// removes everything mailguard added.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Entry is one ban as the kernel holds it.
type Entry struct {
	// Prefix is the banned network (a host is a /32 or /128). IPv4-mapped
	// IPv6 prefixes are treated as IPv4.
	Prefix netip.Prefix
	// Ports are the TCP ports the prefix may not open new connections to.
	// Empty: every TCP port.
	Ports []uint16
	// Expires is when the kernel drops the ban by itself. Zero: never (until
	// removed).
	Expires time.Time
}

func (e Entry) String() string {
	s := e.Prefix.String() + " ports " + portsKey(e.Ports)
	if !e.Expires.IsZero() {
		s += " until " + e.Expires.UTC().Format(time.RFC3339)
	}
	return s
}

// Backend is a kernel firewall holding bans. Methods are safe for
// concurrent use; each change is applied as one batch where the kernel allows.
//
// Entries are identified by (Prefix, Ports): adding an entry that is already
// held replaces its expiry, removing one that is not held is not an error.
// Entries whose Expires has passed are skipped by Add and Sync.
type Backend interface {
	// Add bans the entries (or renews them with the new expiry).
	Add(ctx context.Context, entries []Entry) error
	// Remove lifts the entries.
	Remove(ctx context.Context, entries []Entry) error
	// Sync makes the kernel hold exactly entries: it adds what is missing,
	// renews expiries that differ, removes the rest and repairs the
	// table/chains/sets if someone changed them.
	Sync(ctx context.Context, entries []Entry) error
	// List returns the entries the kernel holds now, with their expiry.
	List(ctx context.Context) ([]Entry, error)
	// Flush removes everything mailguard added to the kernel: every ban,
	// set, rule, chain and table of its own. The Backend must be closed
	// after Flush; nothing else is touched.
	Flush(ctx context.Context) error
	// Close releases the backend's resources and stops its goroutines. It
	// leaves the bans in the kernel.
	Close() error
}

// Backend names, the values of the firewall.backend setting.
const (
	NameNone     = "none"
	NameNFTables = "nftables"
	NameIPTables = "iptables"
)

// Names returns the backend names Open accepts (besides "", which is none).
func Names() []string { return []string{NameNone, NameNFTables, NameIPTables} }

// Options configure a backend. The zero value uses the default clock and
// logger.
//
// A backend acts on the network namespace of the thread that calls it (the
// netlink socket, or the iptables and ipset programs, inherit it): the
// process's own for the daemon. Tests enter a namespace of their own with
// internal/netnstest and call the backend from that thread only.
type Options struct {
	// Log receives the backend's notices. Nil: slog.Default().
	Log *slog.Logger
	// Now is the clock Entry.Expires is read against. Nil: time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// ErrUnknownBackend is returned for a backend name that is none of
// NameNone, NameNFTables and NameIPTables.
var ErrUnknownBackend = errors.New("unknown firewall backend (want none, nftables or iptables)")

// Open returns the named backend with its table, chains and sets created.
// It is what the daemon calls at start.
func Open(ctx context.Context, name string, o Options) (Backend, error) {
	switch name {
	case NameNone, "":
		return NewNone(o.Log), nil
	case NameNFTables:
		return backend(NewNFTables(ctx, o))
	case NameIPTables:
		return backend(NewIPTables(ctx, o))
	}
	return nil, fmt.Errorf("firewall: %q: %w", name, ErrUnknownBackend)
}

// backend returns b as a Backend, or a nil Backend (not a typed nil) on error.
func backend[B Backend](b B, err error) (Backend, error) {
	if err != nil {
		return nil, err
	}
	return b, nil
}

// List returns the bans the named backend holds in the kernel, without
// creating anything: `mailguard firewall list`, which runs without the daemon.
func List(ctx context.Context, name string, o Options) ([]Entry, error) {
	b, err := openExisting(ctx, name, o)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return b.List(ctx)
}

// Flush removes everything the named backend added to the kernel (bans, sets,
// rules, chains, table): `mailguard firewall flush`, which runs without the
// daemon. A running daemon re-creates its table at its next reconcile.
func Flush(ctx context.Context, name string, o Options) error {
	b, err := openExisting(ctx, name, o)
	if err != nil {
		return err
	}
	defer b.Close()
	return b.Flush(ctx)
}

func openExisting(ctx context.Context, name string, o Options) (Backend, error) {
	switch name {
	case NameNone, "":
		return none{}, nil
	case NameNFTables:
		return backend(newNFTables(ctx, o, false))
	case NameIPTables:
		return backend(newIPTables(ctx, o, false))
	}
	return nil, fmt.Errorf("firewall: %q: %w", name, ErrUnknownBackend)
}

// entryKey identifies an entry: the kernel holds one element per key.
type entryKey struct {
	prefix netip.Prefix
	ports  string // portsKey
}

// normalize checks e and returns it canonical: prefix masked and unmapped,
// ports sorted without duplicates.
func normalize(e Entry) (Entry, error) {
	p := e.Prefix
	if !p.IsValid() {
		return Entry{}, fmt.Errorf("invalid prefix %v", e.Prefix)
	}
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return Entry{}, fmt.Errorf("prefix %v: mapped IPv4 shorter than /96", e.Prefix)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	p = netip.PrefixFrom(p.Addr().WithZone(""), p.Bits()).Masked()
	if p.Bits() == 0 {
		return Entry{}, fmt.Errorf("prefix %v: refusing to ban a whole address family", e.Prefix)
	}
	ports := slices.Clone(e.Ports)
	slices.Sort(ports)
	ports = slices.Compact(ports)
	if slices.Contains(ports, 0) {
		return Entry{}, fmt.Errorf("prefix %v: port 0", e.Prefix)
	}
	if len(ports) > maxPorts {
		return Entry{}, fmt.Errorf("prefix %v: %d ports, at most %d", e.Prefix, len(ports), maxPorts)
	}
	return Entry{Prefix: p, Ports: ports, Expires: e.Expires}, nil
}

// maxPorts bounds a port group so that its set name stays short.
const maxPorts = 32

func (e Entry) key() entryKey { return entryKey{e.Prefix, portsKey(e.Ports)} }

// portsKey names a sorted port list: "25_465_587", or "all" when empty.
func portsKey(ports []uint16) string {
	if len(ports) == 0 {
		return "all"
	}
	var b strings.Builder
	for i, p := range ports {
		if i > 0 {
			b.WriteByte('_')
		}
		b.WriteString(strconv.Itoa(int(p)))
	}
	return b.String()
}

// parsePortsKey is the inverse of portsKey.
func parsePortsKey(s string) ([]uint16, bool) {
	if s == "all" {
		return nil, true
	}
	var ports []uint16
	for f := range strings.SplitSeq(s, "_") {
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return nil, false
		}
		ports = append(ports, uint16(n))
	}
	return ports, true
}

// prepare normalizes entries, drops expired ones (as of now) and merges
// duplicates, keeping the latest expiry.
func prepare(entries []Entry, now time.Time) (map[entryKey]Entry, error) {
	out := make(map[entryKey]Entry, len(entries))
	var errs []error
	for _, e := range entries {
		n, err := normalize(e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !n.Expires.IsZero() && !n.Expires.After(now) {
			continue
		}
		k := n.key()
		if old, ok := out[k]; ok && !later(n.Expires, old.Expires) {
			continue
		}
		out[k] = n
	}
	return out, errors.Join(errs...)
}

// later reports whether expiry a ends after b; zero is never.
func later(a, b time.Time) bool {
	switch {
	case a.IsZero():
		return !b.IsZero()
	case b.IsZero():
		return false
	}
	return a.After(b)
}

// expiryTolerance is how far a kernel expiry may drift from the wanted one
// before Sync renews it: the kernel keeps milliseconds or seconds, and
// reconciling every drift would churn.
const expiryTolerance = 2 * time.Second

// sameExpiry reports whether the kernel's expiry have matches want.
func sameExpiry(have, want time.Time) bool {
	if have.IsZero() || want.IsZero() {
		return have.IsZero() == want.IsZero()
	}
	d := have.Sub(want)
	return d < expiryTolerance && d > -expiryTolerance
}

// ttl is the timeout to give the kernel for an entry expiring at exp, rounded
// up to a millisecond; zero for an entry that never expires.
func ttl(exp, now time.Time) time.Duration {
	if exp.IsZero() {
		return 0
	}
	d := exp.Sub(now)
	return max(d.Round(time.Millisecond), time.Millisecond)
}

// sortEntries orders entries by prefix, then ports, for stable listings.
func sortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if c := a.Prefix.Bits() - b.Prefix.Bits(); c != 0 {
			return c
		}
		return slices.Compare(a.Ports, b.Ports)
	})
}
