package storetest

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// totpCases check store.TOTPStore and Check's TOTP answer.
var totpCases = []testCase{
	{"EnrolAndCheck", func(t *testing.T, e *env) {
		ts := e.totp()
		p := netip.MustParsePrefix("198.51.100.0/24")
		q := store.Query{TOTPUser: "alice@example.org", TOTPPrefix: p}
		if got := e.check(q).TOTP; got != (store.TOTPState{}) {
			t.Errorf("before Enrol: TOTP = %+v, want zero", got)
		}
		if _, err := ts.Enrolment(e.ctx, "alice@example.org"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Enrolment before Enrol = %v, want ErrNotFound", err)
		}
		sec := []byte("sealed\x00secret\xff")
		if err := ts.Enrol(e.ctx, store.Enrolment{User: "alice@example.org", Secret: sec, LastStep: 7}); err != nil {
			t.Fatalf("Enrol = %v", err)
		}
		got, err := ts.Enrolment(e.ctx, "alice@example.org")
		if err != nil || string(got.Secret) != string(sec) || got.LastStep != 7 || !got.Created.Equal(e.now()) {
			t.Errorf("Enrolment = %+v, %v; want the secret, step 7, created now", got, err)
		}
		if got := e.check(q).TOTP; got != (store.TOTPState{Enrolled: true}) {
			t.Errorf("enrolled, not approved: TOTP = %+v", got)
		}
		if got := e.check(store.Query{TOTPUser: "bob@example.org", TOTPPrefix: p}).TOTP; got.Enrolled {
			t.Errorf("other user: TOTP = %+v, want not enrolled", got)
		}
		list, err := ts.Enrolments(e.ctx)
		if err != nil || len(list) != 1 || list[0].User != "alice@example.org" || len(list[0].Secret) != 0 {
			t.Errorf("Enrolments = %+v, %v; want alice without her secret", list, err)
		}
		// The ban answer is unchanged by the TOTP lookup.
		e.ban(store.Ban{Jail: "j", Subject: "net:198.51.100.7/32", Expires: e.now().Add(time.Hour)})
		a := e.check(store.Query{Subjects: []string{"net:198.51.100.7/32"}, Known: "k", TOTPUser: "alice@example.org", TOTPPrefix: p,
			Counts: []store.Window{{Jail: "j", Subject: "x", Span: time.Minute}}})
		if len(a.Bans) != 1 || a.Known || len(a.Counts) != 1 || !a.TOTP.Enrolled {
			t.Errorf("Check with everything = %+v", a)
		}
	}},
	{"Approve", func(t *testing.T, e *env) {
		ts := e.enrolled("alice@example.org")
		p := netip.MustParsePrefix("198.51.100.0/24")
		q := store.Query{TOTPUser: "alice@example.org", TOTPPrefix: p}
		if err := ts.Approve(e.ctx, store.Approval{User: "alice@example.org", Prefix: p, Expires: e.now().Add(time.Hour)}); err != nil {
			t.Fatalf("Approve = %v", err)
		}
		if got := e.check(q).TOTP; !got.Approved {
			t.Errorf("approved: TOTP = %+v", got)
		}
		other := store.Query{TOTPUser: "alice@example.org", TOTPPrefix: netip.MustParsePrefix("203.0.113.0/24")}
		if got := e.check(other).TOTP; got.Approved {
			t.Errorf("other prefix: TOTP = %+v, want not approved", got)
		}
		as, err := ts.Approvals(e.ctx, "alice@example.org")
		if err != nil || len(as) != 1 || as[0].Prefix != p || !as[0].Expires.Equal(e.now().Add(time.Hour)) || !as[0].Created.Equal(e.now()) {
			t.Errorf("Approvals = %+v, %v", as, err)
		}
		e.clk.Advance(time.Hour - time.Millisecond)
		if got := e.check(q).TOTP; !got.Approved {
			t.Errorf("1ms before expiry: TOTP = %+v, want approved", got)
		}
		e.clk.Advance(time.Millisecond)
		if got := e.check(q).TOTP; got.Approved {
			t.Errorf("at expiry: TOTP = %+v, want not approved", got)
		}
		if as, _ := ts.Approvals(e.ctx, ""); len(as) != 0 {
			t.Errorf("Approvals after expiry = %+v, want none", as)
		}
	}},
	{"Revoke", func(t *testing.T, e *env) {
		ts := e.enrolled("alice@example.org")
		e.enrolled("bob@example.org")
		ps := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8:1::/56")}
		for _, u := range []string{"alice@example.org", "bob@example.org"} {
			for _, p := range ps {
				if err := ts.Approve(e.ctx, store.Approval{User: u, Prefix: p, Expires: e.now().Add(time.Hour)}); err != nil {
					t.Fatalf("Approve = %v", err)
				}
			}
		}
		if as, _ := ts.Approvals(e.ctx, ""); len(as) != 4 || as[0].User != "alice@example.org" || as[3].User != "bob@example.org" {
			t.Errorf("Approvals(all) = %+v, want 4 by user", as)
		}
		if n, err := ts.Revoke(e.ctx, "alice@example.org", ps[0]); n != 1 || err != nil {
			t.Errorf("Revoke(one) = %d, %v; want 1", n, err)
		}
		if n, err := ts.Revoke(e.ctx, "alice@example.org", ps[0]); n != 0 || err != nil {
			t.Errorf("Revoke(one) again = %d, %v; want 0", n, err)
		}
		if got := e.check(store.Query{TOTPUser: "alice@example.org", TOTPPrefix: ps[1]}).TOTP; !got.Approved {
			t.Errorf("the other approval: %+v, want approved", got)
		}
		if n, err := ts.Revoke(e.ctx, "bob@example.org", netip.Prefix{}); n != 2 || err != nil {
			t.Errorf("Revoke(all) = %d, %v; want 2", n, err)
		}
		if as, _ := ts.Approvals(e.ctx, ""); len(as) != 1 || as[0].Prefix != ps[1] {
			t.Errorf("Approvals after revokes = %+v", as)
		}
	}},
	{"ReplayStep", func(t *testing.T, e *env) {
		ts := e.enrolled("alice@example.org")
		if _, err := ts.UseStep(e.ctx, "nobody", 5); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("UseStep(not enrolled) = %v, want ErrNotFound", err)
		}
		for i, c := range []struct {
			step int64
			want bool
		}{{100, true}, {100, false}, {99, false}, {101, true}, {50, false}} {
			got, err := ts.UseStep(e.ctx, "alice@example.org", c.step)
			if err != nil || got != c.want {
				t.Errorf("UseStep #%d(%d) = %v, %v; want %v", i, c.step, got, err, c.want)
			}
		}
		if en, _ := ts.Enrolment(e.ctx, "alice@example.org"); en.LastStep != 101 {
			t.Errorf("LastStep = %d, want 101", en.LastStep)
		}
	}},
	{"Pending", func(t *testing.T, e *env) {
		ts := e.enrolled("alice@example.org")
		pend := func(i int, proto string) store.Pending {
			return store.Pending{User: "alice@example.org", Prefix: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/24", i)),
				Addr: netip.MustParseAddr(fmt.Sprintf("10.%d.0.7", i)), Protocol: proto}
		}
		for i := range store.MaxPending + 5 {
			if err := ts.AddPending(e.ctx, pend(i, "imap"), time.Hour); err != nil {
				t.Fatalf("AddPending = %v", err)
			}
			e.clk.Advance(time.Millisecond)
		}
		got, err := ts.Pending(e.ctx, "alice@example.org")
		if err != nil || len(got) != store.MaxPending {
			t.Fatalf("Pending = %d entries, %v; want %d", len(got), err, store.MaxPending)
		}
		if want := pend(store.MaxPending+4, "imap"); got[0].Prefix != want.Prefix || got[0].Addr != want.Addr || got[0].Protocol != "imap" {
			t.Errorf("Pending[0] = %+v, want the last added %+v", got[0], want)
		}
		// The same prefix and protocol again replaces; another protocol adds.
		e.clk.Advance(time.Millisecond)
		ts.AddPending(e.ctx, pend(10, "imap"), time.Hour)
		ts.AddPending(e.ctx, pend(10, "smtp"), time.Hour)
		got, _ = ts.Pending(e.ctx, "alice@example.org")
		n := 0
		for _, p := range got {
			if p.Prefix == pend(10, "").Prefix {
				n++
			}
		}
		if n != 2 || got[0].Protocol != "smtp" || got[1].Protocol != "imap" || !got[1].At.Equal(e.now()) {
			t.Errorf("after re-adding 10.10.0.0/24 imap and smtp: %d entries of it, first %+v %+v", n, got[0], got[1])
		}
		if err := ts.Forget(e.ctx, "alice@example.org", []netip.Prefix{pend(10, "").Prefix}); err != nil {
			t.Fatalf("Forget = %v", err)
		}
		got, _ = ts.Pending(e.ctx, "alice@example.org")
		for _, p := range got {
			if p.Prefix == pend(10, "").Prefix {
				t.Errorf("after Forget: %+v still pending", p)
			}
		}
		e.clk.Advance(time.Hour)
		if got, _ := ts.Pending(e.ctx, "alice@example.org"); len(got) != 0 {
			t.Errorf("after the ttl: %d pending, want 0", len(got))
		}
		if got, _ := ts.Pending(e.ctx, "bob@example.org"); len(got) != 0 {
			t.Errorf("other user: %d pending, want 0", len(got))
		}
	}},
	{"Disenrol", func(t *testing.T, e *env) {
		ts := e.enrolled("alice@example.org")
		p := netip.MustParsePrefix("198.51.100.0/24")
		ts.Approve(e.ctx, store.Approval{User: "alice@example.org", Prefix: p, Expires: e.now().Add(time.Hour)})
		ts.AddPending(e.ctx, store.Pending{User: "alice@example.org", Prefix: p, Protocol: "imap"}, time.Hour)
		if was, err := ts.Disenrol(e.ctx, "alice@example.org"); !was || err != nil {
			t.Errorf("Disenrol = %v, %v; want true", was, err)
		}
		if was, err := ts.Disenrol(e.ctx, "alice@example.org"); was || err != nil {
			t.Errorf("Disenrol again = %v, %v; want false", was, err)
		}
		if got := e.check(store.Query{TOTPUser: "alice@example.org", TOTPPrefix: p}).TOTP; got != (store.TOTPState{}) {
			t.Errorf("after Disenrol: %+v", got)
		}
		as, _ := ts.Approvals(e.ctx, "")
		ps, _ := ts.Pending(e.ctx, "alice@example.org")
		es, _ := ts.Enrolments(e.ctx)
		if len(as)+len(ps)+len(es) != 0 {
			t.Errorf("after Disenrol: approvals %v, pending %v, enrolments %v; want none", as, ps, es)
		}
	}},
	{"Token", func(t *testing.T, e *env) {
		ts := e.totp()
		tk := store.Token{User: "alice@example.org", Secret: []byte("sealed"), Expires: e.now().Add(time.Hour)}
		if err := ts.PutToken(e.ctx, "id1", tk); err != nil {
			t.Fatalf("PutToken = %v", err)
		}
		got, err := ts.TakeToken(e.ctx, "id1", false)
		if err != nil || got.User != tk.User || string(got.Secret) != "sealed" || !got.Expires.Equal(tk.Expires) {
			t.Errorf("TakeToken(keep) = %+v, %v", got, err)
		}
		if _, err := ts.TakeToken(e.ctx, "id1", true); err != nil {
			t.Errorf("TakeToken(remove) = %v", err)
		}
		if _, err := ts.TakeToken(e.ctx, "id1", true); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("TakeToken after removal = %v, want ErrNotFound", err)
		}
		ts.PutToken(e.ctx, "id2", tk)
		e.clk.Advance(time.Hour)
		if _, err := ts.TakeToken(e.ctx, "id2", true); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("TakeToken at expiry = %v, want ErrNotFound", err)
		}
	}},
}

func (e *env) totp() store.TOTPStore {
	e.t.Helper()
	ts, ok := e.st.(store.TOTPStore)
	if !ok {
		e.t.Fatalf("%T does not implement store.TOTPStore", e.st)
	}
	return ts
}

// enrolled enrols user with a dummy sealed secret.
func (e *env) enrolled(user string) store.TOTPStore {
	e.t.Helper()
	ts := e.totp()
	if err := ts.Enrol(e.ctx, store.Enrolment{User: user, Secret: []byte("sealed")}); err != nil {
		e.t.Fatalf("Enrol(%s) = %v", user, err)
	}
	return ts
}
