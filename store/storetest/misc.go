package storetest

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
)

var statsCases = []testCase{
	{"Counters", testStats},
}

var concurrencyCases = []testCase{
	{"OneBanAtMaxRetry", testConcurrentHits},
}

var closedCases = []testCase{
	{"CallsReturnErrClosed", testClosed},
}

func testStats(t *testing.T, e *env) {
	a := hitFor("dovecot", "net:192.0.2.50/32")
	b := hitFor("dovecot", "net:192.0.2.51/32")
	c := hitFor("postfix", "net:192.0.2.50/32")
	e.hitN(a, 2)
	e.hitN(b, 1)
	e.hitN(c, 1)
	type row struct {
		jail string
		want store.JailStats
	}
	check := func(when string, rows ...row) {
		t.Helper()
		var jails []string
		for _, r := range rows {
			jails = append(jails, r.jail)
		}
		got := e.stats(jails...)
		for _, r := range rows {
			if got[r.jail] != r.want {
				t.Errorf("%s: Stats(%v)[%s] = %+v, want %+v", when, jails, r.jail, got[r.jail], r.want)
			}
		}
	}
	check("after 4 failures",
		row{"dovecot", store.JailStats{Failing: 2, TotalFailed: 3}},
		row{"postfix", store.JailStats{Failing: 1, TotalFailed: 1}},
		row{"nosuchjail", store.JailStats{}})

	e.clk.Advance(5 * time.Minute)
	d := hitFor("dovecot", "net:192.0.2.53/32")
	e.banBy(d) // d's window is cleared by the ban: not failing
	e.ban(store.Ban{Jail: "postfix", Subject: "net:192.0.2.52/32", Expires: e.now().Add(time.Hour), Reason: "manual"})
	check("after a ban in each jail",
		row{"dovecot", store.JailStats{Failing: 2, TotalFailed: 3 + int64(d.MaxRetry), TotalBanned: 1}},
		row{"postfix", store.JailStats{Failing: 1, TotalFailed: 1, TotalBanned: 1}})

	e.clk.Advance(5 * time.Minute) // the first failures aged out
	check("after the window passed",
		row{"dovecot", store.JailStats{Failing: 0, TotalFailed: 3 + int64(d.MaxRetry), TotalBanned: 1}},
		row{"postfix", store.JailStats{Failing: 0, TotalFailed: 1, TotalBanned: 1}})
}

// testConcurrentHits: 2×MaxRetry−1 concurrent failures of one subject make
// exactly one ban, and their counts are 1..MaxRetry and 1..MaxRetry−1.
func testConcurrentHits(t *testing.T, e *env) {
	h := hitFor("dovecot", "net:192.0.2.60/32")
	h.MaxRetry = 10
	n := 2*h.MaxRetry - 1
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		results = make([]store.HitResult, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = e.st.Hit(e.ctx, h)
		})
	}
	for range 4 { // readers alongside, for the race detector
		wg.Go(func() {
			<-start
			for range 20 {
				if _, err := e.st.Check(e.ctx, store.Query{Subjects: []store.Subject{h.Subject},
					Counts: []store.Window{{Jail: h.Jail, Subject: h.Subject, Span: h.Span}}}); err != nil {
					t.Errorf("concurrent Check = %v", err)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()

	var bans []store.Ban
	var counts []int
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent Hit = %v", errs[i])
		}
		counts = append(counts, results[i].Count)
		if results[i].Ban != nil {
			bans = append(bans, *results[i].Ban)
			if results[i].Count != h.MaxRetry {
				t.Errorf("banning Hit: Count = %d, want %d", results[i].Count, h.MaxRetry)
			}
		}
	}
	if len(bans) != 1 {
		t.Fatalf("%d concurrent failures with MaxRetry %d made %d bans %s, want exactly 1", n, h.MaxRetry, len(bans), fmtBans(bans))
	}
	slices.Sort(counts)
	var want []int
	for i := 1; i <= h.MaxRetry; i++ {
		want = append(want, i)
		if i < h.MaxRetry {
			want = append(want, i)
		}
	}
	if !slices.Equal(counts, want) {
		t.Errorf("concurrent Hit counts (sorted) = %v, want %v", counts, want)
	}
	e.wantBans("Bans()", e.bans(), bans)
	if got := e.count(h.Jail, h.Subject, h.Span); got != h.MaxRetry-1 {
		t.Errorf("count after the ban = %d, want %d", got, h.MaxRetry-1)
	}
}

func testClosed(t *testing.T, e *env) {
	if err := e.st.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	ctx := e.ctx
	s := store.Subject("net:192.0.2.70/32")
	calls := []struct {
		name string
		call func() error
	}{
		{"Check", func() error { _, err := e.st.Check(ctx, store.Query{Subjects: []store.Subject{s}}); return err }},
		{"Hit", func() error { _, err := e.st.Hit(ctx, hitFor("dovecot", s)); return err }},
		{"Ban", func() error {
			_, err := e.st.Ban(ctx, store.Ban{Jail: "manual", Subject: s, Expires: e.now().Add(time.Hour)})
			return err
		}},
		{"Unban", func() error { _, err := e.st.Unban(ctx, s); return err }},
		{"Bans", func() error { _, err := e.st.Bans(ctx); return err }},
		{"Reset", func() error { return e.st.Reset(ctx, "dovecot", s) }},
		{"Remember", func() error { return e.st.Remember(ctx, "user+net:x|192.0.2.0/24", time.Hour) }},
		{"Stats", func() error { _, err := e.st.Stats(ctx, []string{"dovecot"}); return err }},
		{"Watch", func() error {
			done := make(chan error, 1)
			go func() { done <- e.st.Watch(ctx, func(store.Event) {}) }()
			select {
			case err := <-done:
				return err
			case <-time.After(eventWait):
				return errors.New("did not return")
			}
		}},
	}
	for _, c := range calls {
		if err := c.call(); !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close = %v, want store.ErrClosed", c.name, err)
		}
	}
}
