package guard

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Key says what a jail counts and bans.
type Key string

const (
	KeyIP         Key = "ip"          // the client address (/32, /128)
	KeyPrefix     Key = "prefix"      // the client's prefix (prefix.ipv4, prefix.ipv6)
	KeyUser       Key = "user"        // the login, case-insensitive
	KeyUserPrefix Key = "user+prefix" // the login from one prefix
)

// Keys returns the known keys, in a new slice.
func Keys() []Key { return []Key{KeyIP, KeyPrefix, KeyUser, KeyUserPrefix} }

// Valid reports whether k is one of Keys.
func (k Key) Valid() bool { return slices.Contains(Keys(), k) }

// ByAddress reports whether k names a network (ip, prefix): only such bans
// can reach the kernel firewall.
func (k Key) ByAddress() bool { return k == KeyIP || k == KeyPrefix }

// Prefixes are the aggregation lengths. A zero field means its
// DefaultPrefixes value.
type Prefixes struct {
	IPv4, IPv6 int
}

// DefaultPrefixes: failures of one IPv4 address, or of one IPv6 /64 (what
// one customer gets, and what attackers rotate through), count together.
var DefaultPrefixes = Prefixes{IPv4: 32, IPv6: 64}

func (p Prefixes) of(a netip.Addr) netip.Prefix {
	bits := p.IPv6
	if a.Is4() {
		bits = p.IPv4
		if bits == 0 {
			bits = DefaultPrefixes.IPv4
		}
	} else if bits == 0 {
		bits = DefaultPrefixes.IPv6
	}
	pr, _ := a.Prefix(bits)
	return pr
}

// Canon unmaps IPv4-mapped IPv6 (::ffff:192.0.2.1 is 192.0.2.1) and drops zones.
func Canon(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

// netSubject appends into a stack buffer: one allocation (the string) per
// subject instead of two, on every request's path.
func netSubject(p netip.Prefix) string {
	var b [64]byte // "net:" and the longest IPv6 prefix (43 bytes)
	return string(p.Masked().AppendTo(append(b[:0], "net:"...)))
}

func userSubject(u string) string { return "user:" + normUser(u) }

// maxLoginLen is the longest login guard keeps as it is. A mailbox address
// is at most 254 bytes (RFC 5321's 256-byte path less its angle brackets),
// but Dovecot passes logins up to its auth protocol's line limit (~16 KB) and
// Postfix SASL usernames up to its line_length_limit (2048): an attacker's
// 8,000-byte logins would cost 8 KB per failure in the store, for findtime.
const maxLoginLen = 255

// normUser is the form of a login that guard counts, bans, stores and
// compares: trimmed and lower-cased; past maxLoginLen bytes, a fixed-size
// digest of that ("sha256:" and 32 hex digits), so that memory per key is
// bounded while long logins still count (refusing them instead would let an
// attacker guess passwords uncounted behind a long login). It is idempotent:
// normUser(normUser(u)) == normUser(u).
func normUser(u string) string {
	u = strings.ToLower(strings.TrimSpace(u))
	if len(u) <= maxLoginLen {
		return u
	}
	sum := sha256.Sum256([]byte(u))
	return "sha256:" + hex.EncodeToString(sum[:16])
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func userNetSubject(u string, p netip.Prefix) string {
	u = normUser(u)
	var buf [320]byte // fits "user+net:", a login of maxLoginLen, "|" and a prefix
	b := append(buf[:0], "user+net:"...)
	b = append(b, u...)
	b = append(b, '|')
	return string(p.Masked().AppendTo(b))
}

// SubjectPrefix returns the network a subject names, if it names one.
func SubjectPrefix(s string) (netip.Prefix, bool) {
	rest, ok := strings.CutPrefix(s, "net:")
	if !ok {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(rest)
	if err != nil {
		return netip.Prefix{}, false
	}
	return p, true
}

// ParseTarget turns what an administrator typed (an address, a CIDR, a
// login) into a subject. Addresses become host subjects; a CIDR must be a host
// or have the configured prefix length, the lengths checks look at.
func (g *Guard) ParseTarget(s string) (subject string, prefix netip.Prefix, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", netip.Prefix{}, &requestError{ErrTarget, "empty target"}
	}
	if a, err := netip.ParseAddr(s); err == nil {
		p := hostPrefix(Canon(a))
		return netSubject(p), p, nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		a := Canon(p.Addr())
		bits := p.Bits()
		if p.Addr().Is4In6() {
			bits -= 96
		}
		p = netip.PrefixFrom(a, bits).Masked()
		if want := g.prefixes.of(a).Bits(); bits != a.BitLen() && bits != want && !(a.Is6() && g.widenBits(bits)) {
			if want == a.BitLen() {
				return "", netip.Prefix{}, &requestError{ErrTarget, fmt.Sprintf("prefix %s: only single addresses (/%d) are banned at prefix.ipv4 %d", s, want, want)}
			}
			return "", netip.Prefix{}, &requestError{ErrTarget, fmt.Sprintf("prefix %s: length must be /%d or /%d (prefix.ipv4, prefix.ipv6)", s, a.BitLen(), want)}
		}
		return netSubject(p), p, nil
	}
	if strings.ContainsAny(s, " \t\r\n|") || strings.Contains(s, "/") && !strings.Contains(s, "@") {
		return "", netip.Prefix{}, &requestError{ErrTarget, fmt.Sprintf("%q is neither an address, a prefix nor a login", s)}
	}
	return userSubject(s), netip.Prefix{}, nil
}

// NormUser is the form of a login every store record is kept under
// (lower-cased, trimmed, long logins digested): packages that keep records
// per user (totp) use it so that guard and they name a user alike.
func NormUser(u string) string { return normUser(u) }
