package firewall

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestNormalize(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ports    []uint16
		want     string // "prefix ports", or "error"
	}{
		{"host4", "192.0.2.7/32", []uint16{993, 25, 993}, "192.0.2.7/32 25_993"},
		{"masked", "192.0.2.7/24", nil, "192.0.2.0/24 all"},
		{"mapped", "::ffff:192.0.2.7/128", []uint16{25}, "192.0.2.7/32 25"},
		{"v6 /64", "2001:db8::1234/64", []uint16{25}, "2001:db8::/64 25"},
		{"v6 /128", "2001:db8::1/128", []uint16{25}, "2001:db8::1/128 25"},
		{"everything", "0.0.0.0/0", nil, "error"},
		{"port 0", "192.0.2.7/32", []uint16{0}, "error"},
		{"too many ports", "192.0.2.7/32", make33(), "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := normalize(Entry{Prefix: pfx(tc.in), Ports: tc.ports})
			s := "error"
			if err == nil {
				s = got.Prefix.String() + " " + portsKey(got.Ports)
			}
			if s != tc.want {
				t.Errorf("normalize(%s %v) = %q (%v), want %q", tc.in, tc.ports, s, err, tc.want)
			}
		})
	}
}

func make33() []uint16 {
	p := make([]uint16, 33)
	for i := range p {
		p[i] = uint16(i + 1)
	}
	return p
}

func TestPrepare(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	es := []Entry{
		{Prefix: pfx("192.0.2.1/32"), Ports: []uint16{25}, Expires: now.Add(time.Minute)},
		{Prefix: pfx("192.0.2.1/32"), Ports: []uint16{25}, Expires: now.Add(time.Hour)},
		{Prefix: pfx("192.0.2.1/32"), Ports: []uint16{25}, Expires: now.Add(time.Second)},
		{Prefix: pfx("192.0.2.2/32"), Ports: []uint16{25}, Expires: now.Add(-time.Second)}, // expired
		{Prefix: pfx("192.0.2.3/32"), Ports: []uint16{25}},                                 // never expires
	}
	got, err := prepare(es, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("prepare = %v, want 2 entries", got)
	}
	if e := got[entryKey{pfx("192.0.2.1/32"), "25"}]; !e.Expires.Equal(now.Add(time.Hour)) {
		t.Errorf("duplicate kept expiry %v, want the latest %v", e.Expires, now.Add(time.Hour))
	}
}

func TestPortsKey(t *testing.T) {
	for _, ports := range [][]uint16{nil, {25}, {25, 465, 587, 993, 995}, {65535}} {
		got, ok := parsePortsKey(portsKey(ports))
		if !ok || !slices.Equal(got, ports) {
			t.Errorf("parsePortsKey(portsKey(%v)) = %v, %v", ports, got, ok)
		}
	}
	for _, bad := range []string{"", "0", "25_", "x", "70000"} {
		if _, ok := parsePortsKey(bad); ok {
			t.Errorf("parsePortsKey(%q) ok, want not", bad)
		}
	}
}

func TestSetName(t *testing.T) {
	for _, s := range []setSpec{{false, 32, []uint16{25}}, {true, 64, nil}, {true, 128, []uint16{993, 995}}, {false, 24, []uint16{1, 2, 3}}} {
		got, ok := parseSetName(s.name())
		if !ok || got.v6 != s.v6 || got.bits != s.bits || !slices.Equal(got.ports, s.ports) {
			t.Errorf("parseSetName(%q) = %+v, %v, want %+v", s.name(), got, ok, s)
		}
	}
	for _, bad := range []string{"filter", "ban4_33_p25", "ban5_32_p25", "ban4_32", "ban6_64_pfoo"} {
		if _, ok := parseSetName(bad); ok {
			t.Errorf("parseSetName(%q) ok, want not ours", bad)
		}
	}
}

func TestParseRule(t *testing.T) {
	for _, tc := range []struct{ line, want string }{
		{`-A MAILGUARD -p tcp -m multiport --dports 993 -m set --match-set mailguard6-0a0b0c0d src -m comment --comment "mailguard:ports=993" -j DROP`,
			"mailguard6-0a0b0c0d|993|993"},
		{`-A MAILGUARD -p tcp -m set --match-set mailguard4-0a0b0c0d src -m comment --comment mailguard:ports=all -j DROP`,
			"mailguard4-0a0b0c0d|all|"},
		// not ours in form: Sync deletes them
		{`-A MAILGUARD -s 10.200.0.2/32 -p tcp -m multiport --dports 25,465 -m time --datestop 2026-11-27T04:00:00 -m comment --comment "mailguard:ports=25_465:until=1795754295" -j DROP`, "|all|"},
		{`-A MAILGUARD -p tcp -m set --match-set mailguard4-0a0b0c0d src -m comment --comment mailguard:ports=all -j ACCEPT`, "|all|"},
		{`-A MAILGUARD -p tcp -m set --match-set other src -m comment --comment mailguard:ports=all -j DROP`, "|all|"},
		{`-A MAILGUARD -s 10.0.0.1/32 -j ACCEPT`, "|all|"},
	} {
		f := splitQuoted(tc.line)
		if got := parseRule(f[2:]).id(); got != tc.want {
			t.Errorf("parseRule(%s)\n got %s\nwant %s", tc.line, got, tc.want)
		}
	}
}

func TestChunks(t *testing.T) {
	if got := chunks(nil); !slices.Equal(got, []string{""}) {
		t.Errorf("chunks(nil) = %q", got)
	}
	got := chunks(make33()[:16])
	if len(got) != 2 || got[1] != "16" {
		t.Errorf("chunks(16 ports) = %q, want 15 + 1", got)
	}
}

func TestExplain(t *testing.T) {
	for _, tc := range []struct {
		backend string
		err     error
		is      error
		hint    string
	}{
		{NameNFTables, fmt.Errorf("netlink: %w", unix.EPERM), unix.EPERM, hintPermission},
		{NameIPTables, errNoNetAdmin, unix.EPERM, hintPermission},
		{NameNFTables, fmt.Errorf("netlink: %w", unix.EOPNOTSUPP), unix.EOPNOTSUPP, hintNoNFTables},
		{NameIPTables, &exec.Error{Name: "iptables", Err: exec.ErrNotFound}, exec.ErrNotFound, hintNoIPTables},
	} {
		got := explain(tc.backend, tc.err)
		if !errors.Is(got, tc.is) || !strings.HasSuffix(got.Error(), tc.hint) || !strings.HasPrefix(got.Error(), tc.backend+": ") {
			t.Errorf("explain(%s, %v) = %q, want it to wrap %v and end with %q", tc.backend, tc.err, got, tc.is, tc.hint)
		}
	}
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, "pf", Options{}); !errors.Is(err, ErrUnknownBackend) {
		t.Errorf("Open(pf) = %v, want ErrUnknownBackend", err)
	}
	b, err := Open(ctx, NameNone, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Add(ctx, []Entry{{Prefix: pfx("192.0.2.1/32")}}); err != nil {
		t.Errorf("none: Add = %v", err)
	}
	if es, err := List(ctx, NameNone, Options{}); len(es) != 0 || err != nil {
		t.Errorf("List(none) = %v, %v", es, err)
	}
}
