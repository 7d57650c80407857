package memstore

import (
	"net/netip"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// TestTOTPPersisted: enrolments (with their last step), approvals, pending
// logins and tokens survive a restart, from the journal and from a
// snapshot; a disenrolment does too.
func TestTOTPPersisted(t *testing.T) {
	for _, compact := range []bool{false, true} {
		t.Run(map[bool]string{false: "Journal", true: "Snapshot"}[compact], func(t *testing.T) {
			dir := t.TempDir()
			now := time.Now().Truncate(time.Millisecond)
			clock := func() time.Time { return now }
			ctx := t.Context()
			p := netip.MustParsePrefix("198.51.100.0/24")
			s := open(t, Options{Dir: dir, Now: clock})
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			must(s.Enrol(ctx, store.Enrolment{User: "alice", Secret: []byte("sealed-a")}))
			must(s.Enrol(ctx, store.Enrolment{User: "bob", Secret: []byte("sealed-b")}))
			if ok, err := s.UseStep(ctx, "alice", 42); !ok || err != nil {
				t.Fatalf("UseStep = %v, %v", ok, err)
			}
			must(s.Approve(ctx, store.Approval{User: "alice", Prefix: p, Expires: now.Add(time.Hour)}))
			must(s.AddPending(ctx, store.Pending{User: "alice", Prefix: netip.MustParsePrefix("203.0.113.0/24"),
				Addr: netip.MustParseAddr("203.0.113.9"), Protocol: "imap"}, time.Hour))
			must(s.PutToken(ctx, "tok", store.Token{User: "carol", Secret: []byte("sealed-c"), Expires: now.Add(time.Hour)}))
			if _, err := s.Disenrol(ctx, "bob"); err != nil {
				t.Fatal(err)
			}
			if compact {
				must(s.compact())
			}
			must(s.Close())

			s = open(t, Options{Dir: dir, Now: clock})
			defer s.Close()
			e, err := s.Enrolment(ctx, "alice")
			if err != nil || string(e.Secret) != "sealed-a" || e.LastStep != 42 {
				t.Errorf("alice after restart = %+v, %v", e, err)
			}
			if ok, _ := s.UseStep(ctx, "alice", 42); ok {
				t.Error("step 42 usable again after a restart: replay")
			}
			if _, err := s.Enrolment(ctx, "bob"); err == nil {
				t.Error("bob enrolled again after a restart")
			}
			a, _ := s.Check(ctx, store.Query{TOTPUser: "alice", TOTPPrefix: p})
			if !a.TOTP.Approved {
				t.Errorf("approval lost: %+v", a.TOTP)
			}
			if ps, _ := s.Pending(ctx, "alice"); len(ps) != 1 || ps[0].Addr != netip.MustParseAddr("203.0.113.9") || ps[0].Protocol != "imap" {
				t.Errorf("pending after restart = %+v", ps)
			}
			if tk, err := s.TakeToken(ctx, "tok", true); err != nil || tk.User != "carol" {
				t.Errorf("token after restart = %+v, %v", tk, err)
			}
		})
	}
}
