package guard

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// TestAuditEvents: every decision kind (failure, ban, refusal with its
// reference, manual ban, unban) reaches the trails of both stores, each
// event under the client's address, prefix and user.
func TestAuditEvents(t *testing.T) {
	for _, backend := range []string{"memory", "redis"} {
		t.Run(backend, func(t *testing.T) {
			clk := fakeclock.New(time.Now().Truncate(time.Second))
			var st store.Store
			switch backend {
			case "memory":
				m, err := memstore.Open(memstore.Options{Now: clk.Now})
				if err != nil {
					t.Fatal(err)
				}
				st = m
			case "redis":
				addr := redistest.Start(t)
				r, err := redisstore.Open(t.Context(), redisstore.Options{Addrs: []string{addr}, Prefix: "mgaudit:", Now: clk.Now, Node: "a"})
				if err != nil {
					t.Fatal(err)
				}
				st = r
			}
			t.Cleanup(func() { st.Close() })
			rec := audit.NewRecorder(audit.Options{Node: "mx1", Users: audit.UserPlain, Store: st.(store.Auditing), Keep: 20, TTL: time.Hour, Now: clk.Now})
			t.Cleanup(func() { rec.Close() })
			g, err := New(st, Config{Jails: []Jail{authJail}, Prefixes: Prefixes{IPv4: 32, IPv6: 64}, Now: clk.Now, Audit: rec})
			if err != nil {
				t.Fatal(err)
			}
			ctx := WithOrigin(t.Context(), "dovecot", "imap")
			a := netip.MustParseAddr("192.0.2.7")
			for range authJail.MaxRetry {
				if _, err := g.Fail(ctx, a, "Alice@example.org", "imap", ""); err != nil {
					t.Fatal(err)
				}
			}
			v, err := g.CheckLogin(ctx, a, "alice@example.org")
			if err != nil || !v.Refused || !audit.ValidID(v.Ref) {
				t.Fatalf("CheckLogin = %+v, %v; want refused with a reference", v, err)
			}
			if _, err := g.Ban(t.Context(), "198.51.100.9", "", 0); err != nil {
				t.Fatal(err)
			}
			if _, err := g.Unban(t.Context(), "192.0.2.7"); err != nil {
				t.Fatal(err)
			}
			if err := rec.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
			au := st.(store.Auditing)
			trail := func(sub string) []audit.Event {
				t.Helper()
				recs, err := au.Trail(context.Background(), sub)
				if err != nil {
					t.Fatal(err)
				}
				var out []audit.Event
				for _, r := range recs {
					e, err := audit.Unmarshal(r)
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, e)
				}
				return out
			}
			kinds := func(es []audit.Event) []audit.Kind {
				var k []audit.Kind
				for _, e := range es {
					k = append(k, e.Kind)
				}
				return k
			}
			f, b, r, u := audit.KindFailure, audit.KindBan, audit.KindRefusal, audit.KindUnban
			ip := trail("net:192.0.2.7/32")
			if want := []audit.Kind{f, f, f, f, f, b, r, u}; !slices.Equal(kinds(ip), want) {
				t.Fatalf("trail of 192.0.2.7 = %v, want %v", kinds(ip), want)
			}
			if want := []audit.Kind{f, f, f, f, f, b, r}; !slices.Equal(kinds(trail("user:alice@example.org")), want) {
				t.Errorf("trail of alice = %v, want %v", kinds(trail("user:alice@example.org")), want)
			}
			fail, ban, ref, unban := ip[4], ip[5], ip[6], ip[7]
			if fail.Source != "dovecot" || fail.Protocol != "imap" || fail.User != "alice@example.org" || fail.Count != 5 ||
				!slices.Equal(fail.Jails, []string{"dovecot"}) || fail.Node != "mx1" || fail.Event != EventAuthFailure {
				t.Errorf("5th failure = %+v", fail)
			}
			if ban.Jail != "dovecot" || ban.Subject != "net:192.0.2.7/32" || ban.Nth != 1 || ban.BanTime != "1h0m0s" {
				t.Errorf("ban = %+v", ban)
			}
			if ref.ID != v.Ref || ref.Subject != "net:192.0.2.7/32" || ref.Jail != "dovecot" || ref.Source != "dovecot" {
				t.Errorf("refusal = %+v, want id %s", ref, v.Ref)
			}
			if unban.Source != "admin" || unban.Jail != "dovecot" {
				t.Errorf("unban = %+v", unban)
			}
			if got, err := au.Record(context.Background(), v.Ref); err != nil || got == nil {
				t.Errorf("Record(%s) = %s, %v; want the refusal", v.Ref, got, err)
			}
			if m := trail("net:198.51.100.9/32"); len(m) != 1 || m[0].Kind != b || m[0].Source != "admin" || m[0].Jail != ManualJail {
				t.Errorf("trail of the manual ban = %+v", m)
			}
		})
	}
}

// recordFunc is an Auditor counting what it is given.
type recordFunc func(audit.Event) string

func (f recordFunc) Record(e audit.Event) string { return f(e) }

// TestRefusalEventsPerMinute: a banned client knocking again and again makes
// one refusal event per source a minute; the refusals in between carry its
// id.
func TestRefusalEventsPerMinute(t *testing.T) {
	clk := fakeclock.New(time.Now())
	st, err := memstore.Open(memstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n := 0
	rec := recordFunc(func(e audit.Event) string {
		if e.Kind != audit.KindRefusal {
			return ""
		}
		n++
		return audit.NewID()
	})
	g, err := New(st, Config{Jails: []Jail{authJail}, Prefixes: Prefixes{IPv4: 32, IPv6: 64}, Now: clk.Now, Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("192.0.2.7")
	if _, err := g.Ban(t.Context(), "192.0.2.7", "", 0); err != nil {
		t.Fatal(err)
	}
	refs := map[string]int{}
	for i := range 120 { // two minutes, a refusal a second, from Postfix
		v, err := g.CheckFrom(t.Context(), "postfix", "smtp", a, "")
		if err != nil || !v.Refused {
			t.Fatalf("check %d = %+v, %v", i, v, err)
		}
		refs[v.Ref]++
		clk.Add(time.Second)
	}
	if n != 2 || len(refs) != 2 {
		t.Errorf("120 refusals in 2 minutes: %d events, %d distinct refs; want 2 and 2", n, len(refs))
	}
	if v, _ := g.CheckFrom(t.Context(), "dovecot", "imap", a, ""); n != 3 || refs[v.Ref] != 0 {
		t.Errorf("first Dovecot refusal: events %d, ref %s reused; want its own event", n, v.Ref)
	}
}

// BenchmarkAudit measures what the audit trail adds to guard's calls on
// the embedded store (the recorder writes to the same store in the
// background, so its work is in the figures): a counted failure from
// rotating addresses, the check of a clean client, and the check of a
// banned one (a refusal).
func BenchmarkAudit(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		setup := func(b *testing.B) (*Guard, *audit.Recorder) {
			clk := fakeclock.New(time.Now())
			st, err := memstore.Open(memstore.Options{Now: clk.Now})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			c := Config{Jails: []Jail{authJail, userJail}, Prefixes: Prefixes{IPv4: 32, IPv6: 64}, Now: clk.Now}
			var rec *audit.Recorder
			if on {
				rec = audit.NewRecorder(audit.Options{Node: "mx1", Store: st, Keep: 40, TTL: time.Hour, Now: clk.Now})
				b.Cleanup(func() { rec.Close() })
				c.Audit = rec
			}
			g, err := New(st, c)
			if err != nil {
				b.Fatal(err)
			}
			return g, rec
		}
		b.Run("failure/"+name, func(b *testing.B) {
			g, rec := setup(b)
			ctx := WithOrigin(context.Background(), "dovecot", "imap")
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
				if _, err := g.Fail(ctx, a, "alice@example.org", "imap", ""); err != nil {
					b.Fatal(err)
				}
			}
			if rec != nil {
				rec.Flush(context.Background())
			}
		})
		b.Run("check/"+name, func(b *testing.B) {
			g, _ := setup(b)
			a := netip.MustParseAddr("198.51.100.7")
			b.ReportAllocs()
			for b.Loop() {
				if _, err := g.CheckFrom(context.Background(), "postfix", "smtp", a, ""); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("refusal/"+name, func(b *testing.B) {
			g, _ := setup(b)
			a := netip.MustParseAddr("192.0.2.7")
			if _, err := g.Ban(context.Background(), "192.0.2.7", "", 0); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if v, err := g.CheckFrom(context.Background(), "postfix", "smtp", a, ""); err != nil || !v.Refused {
					b.Fatal(v, err)
				}
			}
		})
	}
}

// TestAuditLogFailure: failures found in logs are audited with their log
// source, whatever its text, and make the ban's event.
func TestAuditLogFailure(t *testing.T) {
	clk := fakeclock.New(time.Now())
	st, err := memstore.Open(memstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec := audit.NewRecorder(audit.Options{Node: "mx1", Store: st, Keep: 10, TTL: time.Hour, Now: clk.Now})
	defer rec.Close()
	pf := Jail{Name: "postfix", Events: []string{EventAbuse}, Key: KeyPrefix, MaxRetry: 2, FindTime: 10 * time.Minute,
		BanTime: time.Hour, Action: ActionRefuse, Logs: []string{"log:/var/log/mail.log:postfix"}}
	g, err := New(st, Config{Jails: []Jail{pf}, Prefixes: Prefixes{IPv4: 32, IPv6: 64}, Now: clk.Now, Audit: rec})
	if err != nil {
		t.Fatal(err)
	}
	const src = "log:/var/log/mail.log:postfix \x1b[31m"
	a := netip.MustParseAddr("203.0.113.9")
	for range 2 {
		if _, _, err := g.LogFailure(t.Context(), "postfix", a, "", src); err != nil {
			t.Fatal(err)
		}
	}
	rec.Flush(t.Context())
	recs, err := st.Trail(t.Context(), "net:203.0.113.9/32")
	if err != nil || len(recs) != 3 {
		t.Fatalf("trail = %d records, %v; want 2 failures and a ban", len(recs), err)
	}
	for i, r := range recs {
		e, err := audit.Unmarshal(r)
		want := []audit.Kind{audit.KindFailure, audit.KindFailure, audit.KindBan}[i]
		if err != nil || e.Kind != want || e.Source != src || e.Event != ProtocolLog {
			t.Errorf("event %d = %+v, %v; want a %s from %q", i, e, err, want, src)
		}
	}
}
