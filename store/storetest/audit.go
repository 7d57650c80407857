package storetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

// auditCases hold every backend to store.Auditing, which the audit trail
// and `mailguard explain` rely on. Expiry is not tested here: Redis expires
// on its own clock, not the suite's (memstore tests its TTL itself).
var auditCases = []testCase{
	{"TrailKeepsLast", func(t *testing.T, e *env) {
		au := e.auditing()
		ip, user := "net:192.0.2.7/32", "user:alice@example.org"
		var recs []store.AuditRecord
		for i := range 7 {
			subs := []string{ip}
			if i%2 == 0 {
				subs = append(subs, user)
			}
			recs = append(recs, store.AuditRecord{ID: fmt.Sprintf("id%d", i), Subjects: subs,
				Data: fmt.Appendf(nil, `{"n":%d}`, i), Keep: 4, TTL: time.Hour})
		}
		if err := au.Append(e.ctx, recs[:3]); err != nil {
			t.Fatal(err)
		}
		if err := au.Append(e.ctx, recs[3:]); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			subject string
			want    []string
		}{
			{ip, []string{`{"n":3}`, `{"n":4}`, `{"n":5}`, `{"n":6}`}},
			{user, []string{`{"n":0}`, `{"n":2}`, `{"n":4}`, `{"n":6}`}},
			{"net:192.0.2.8/32", []string{}},
		} {
			got, err := au.Trail(e.ctx, tc.subject)
			if err != nil || !slices.Equal(strs(got), tc.want) {
				t.Errorf("Trail(%s) = %q, %v; want %q", tc.subject, strs(got), err, tc.want)
			}
		}
		for _, tc := range []struct{ id, want string }{{"id0", `{"n":0}`}, {"id6", `{"n":6}`}} {
			got, err := au.Record(e.ctx, tc.id)
			if err != nil || string(got) != tc.want {
				t.Errorf("Record(%s) = %q, %v; want %q", tc.id, got, err, tc.want)
			}
		}
		if got, err := au.Record(e.ctx, "nosuch"); err != nil || got != nil {
			t.Errorf("Record(nosuch) = %q, %v; want nil, nil", got, err)
		}
	}},
	// A batch as large as the recorder sends (512): every record is kept
	// by its id and the trails keep the last ones in order, however the
	// backend splits the batch.
	{"LargeBatch", func(t *testing.T, e *env) {
		au := e.auditing()
		subs := []string{"net:192.0.2.9/32", "net:2001:db8::/64", "user:h:0123456789abcdef"}
		var recs []store.AuditRecord
		for i := range 512 {
			recs = append(recs, store.AuditRecord{ID: fmt.Sprintf("big%d", i), Subjects: subs[:1+i%3],
				Data: fmt.Appendf(nil, `{"n":%d}`, i), Keep: 10, TTL: time.Hour})
		}
		if err := au.Append(e.ctx, recs); err != nil {
			t.Fatal(err)
		}
		for k, sub := range subs {
			var want []string
			for i := range 512 {
				if i%3 >= k {
					want = append(want, fmt.Sprintf(`{"n":%d}`, i))
				}
			}
			want = want[len(want)-10:]
			got, err := au.Trail(e.ctx, sub)
			if err != nil || !slices.Equal(strs(got), want) {
				t.Errorf("Trail(%s) = %q, %v; want %q", sub, strs(got), err, want)
			}
		}
		for _, i := range []int{0, 63, 64, 200, 511} {
			got, err := au.Record(e.ctx, fmt.Sprintf("big%d", i))
			if want := fmt.Sprintf(`{"n":%d}`, i); err != nil || string(got) != want {
				t.Errorf("Record(big%d) = %q, %v; want %q", i, got, err, want)
			}
		}
	}},
	{"BadRecord", func(t *testing.T, e *env) {
		au := e.auditing()
		for _, r := range []store.AuditRecord{
			{ID: "", Subjects: []string{"net:192.0.2.1/32"}, Data: []byte("x"), Keep: 1, TTL: time.Hour},
			{ID: "a", Subjects: []string{"net:192.0.2.1/32"}, Data: []byte("x"), Keep: 0, TTL: time.Hour},
			{ID: "b", Subjects: []string{"net:192.0.2.1/32"}, Data: []byte("x"), Keep: 1},
		} {
			if err := au.Append(e.ctx, []store.AuditRecord{r}); err == nil {
				t.Errorf("Append(%+v) = nil error", r)
			}
		}
	}},
	{"Closed", func(t *testing.T, e *env) {
		au := e.auditing()
		e.st.Close()
		if err := au.Append(e.ctx, []store.AuditRecord{{ID: "a", Data: []byte("x"), Keep: 1, TTL: time.Hour}}); err == nil {
			t.Errorf("Append after Close = nil error")
		}
		if _, err := au.Trail(e.ctx, "net:192.0.2.1/32"); err == nil {
			t.Errorf("Trail after Close = nil error")
		}
	}},
}

func strs(b [][]byte) []string {
	out := make([]string, len(b))
	for i, x := range b {
		out[i] = string(x)
	}
	return out
}

func (e *env) auditing() store.Auditing {
	e.t.Helper()
	au, ok := e.st.(store.Auditing)
	if !ok {
		e.t.Fatalf("%T does not implement store.Auditing", e.st)
	}
	return au
}
