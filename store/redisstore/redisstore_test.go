package redisstore_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// newClock returns a test clock that moves only when told.
func newClock() *fakeclock.Clock { return fakeclock.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) }

var prefixes atomic.Int64

// freshPrefix gives every store of a test its own keys on a shared server.
func freshPrefix(t testing.TB) string {
	return fmt.Sprintf("mgtest%d:", prefixes.Add(1))
}

// open opens a store on addrs with prefix and closes it in t.Cleanup.
func open(t testing.TB, o redisstore.Options) *redisstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := redisstore.Open(ctx, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestHitBansAtMaxRetry(t *testing.T) {
	addr := redistest.Start(t)
	clk := newClock()
	s := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(t), Now: clk.Now})
	ctx := context.Background()
	h := store.Hit{Jail: "dovecot", Subject: "net:192.0.2.0/24", Span: 10 * time.Minute, MaxRetry: 3, BanTime: time.Hour, Reason: "auth-failure imap"}
	for i := 1; i <= 2; i++ {
		r, err := s.Hit(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		if r.Count != i || r.Ban != nil {
			t.Fatalf("hit %d = %+v, want count %d and no ban", i, r, i)
		}
		clk.Add(time.Minute)
	}
	r, err := s.Hit(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if r.Count != 3 || r.Ban == nil {
		t.Fatalf("third hit = %+v, want a ban", r)
	}
	want := store.Ban{Jail: "dovecot", Subject: h.Subject, Created: clk.Now(), Expires: clk.Now().Add(time.Hour), Nth: 1, Reason: h.Reason}
	if *r.Ban != want {
		t.Errorf("ban = %+v, want %+v", *r.Ban, want)
	}
	ans, err := s.Check(ctx, store.Query{Subjects: []string{"net:192.0.2.7/32", h.Subject}, Counts: []store.Window{{Jail: "dovecot", Subject: h.Subject, Span: h.Span}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ans.Bans) != 1 || ans.Bans[0] != want || ans.Counts[0] != 0 {
		t.Errorf("Check = %+v, want the ban and a cleared window", ans)
	}
	clk.Add(time.Hour)
	ans, err = s.Check(ctx, store.Query{Subjects: []string{h.Subject}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ans.Bans) != 0 {
		t.Errorf("Check after bantime = %+v, want no ban", ans)
	}
}

func TestSlidingWindow(t *testing.T) {
	addr := redistest.Start(t)
	clk := newClock()
	s := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(t), Now: clk.Now})
	ctx := context.Background()
	h := store.Hit{Jail: "j", Subject: "net:198.51.100.1/32", Span: 10 * time.Minute, MaxRetry: 3, BanTime: time.Hour}
	w := store.Query{Counts: []store.Window{{Jail: "j", Subject: h.Subject, Span: h.Span}}}
	count := func() int {
		t.Helper()
		a, err := s.Check(ctx, w)
		if err != nil {
			t.Fatal(err)
		}
		return a.Counts[0]
	}
	mustHit := func(want int, ban bool) {
		t.Helper()
		r, err := s.Hit(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		if r.Count != want || (r.Ban != nil) != ban {
			t.Fatalf("Hit at %v = %+v, want count %d ban %v", clk.Now(), r, want, ban)
		}
	}
	mustHit(1, false) // t=0
	clk.Add(6 * time.Minute)
	mustHit(2, false) // t=6m
	clk.Add(4 * time.Minute)
	// t=10m: the first failure is exactly findtime old and no longer counts.
	if got := count(); got != 1 {
		t.Errorf("count at findtime = %d, want 1", got)
	}
	mustHit(2, false)
	clk.Add(5 * time.Minute)
	mustHit(3, true) // t=15m: 6m, 10m, 15m
}

func TestDistinctMembersAndSaturation(t *testing.T) {
	addr := redistest.Start(t)
	clk := newClock()
	s := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(t), Now: clk.Now})
	ctx := context.Background()
	h := store.Hit{Jail: "u", Subject: "user:alice@example.org", Span: time.Hour, MaxRetry: 3, BanTime: time.Hour}
	for i, m := range []string{"a", "a", "b", "a", "b"} {
		h.Member = m
		r, err := s.Hit(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		want := map[int]int{0: 1, 1: 1, 2: 2, 3: 2, 4: 2}[i]
		if r.Count != want || r.Ban != nil {
			t.Fatalf("hit %d (%q) = %+v, want count %d", i, m, r, want)
		}
	}
	// A rate limit (no bantime) saturates at MaxRetry+1.
	rl := store.Hit{Jail: "rate", Subject: "user:bob@example.org", Span: time.Hour, MaxRetry: 2}
	for i, want := range []int{1, 2, 3, 3, 3} {
		r, err := s.Hit(ctx, rl)
		if err != nil {
			t.Fatal(err)
		}
		if r.Count != want || r.Ban != nil {
			t.Fatalf("rate hit %d = %+v, want count %d and no ban", i, r, want)
		}
	}
}

func TestRecidiveMatchesDuration(t *testing.T) {
	addr := redistest.Start(t)
	clk := newClock()
	s := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(t), Now: clk.Now})
	ctx := context.Background()
	rec := store.Recidive{Window: 7 * 24 * time.Hour, Factor: 1.7, MaxTime: 40 * time.Hour}
	h := store.Hit{Jail: "j", Subject: "net:203.0.113.0/24", Span: time.Minute, MaxRetry: 1, BanTime: time.Hour + 7*time.Nanosecond, Recidive: rec}
	for n := 1; n <= 8; n++ {
		r, err := s.Hit(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		if r.Ban == nil {
			t.Fatalf("hit %d did not ban", n)
		}
		if got, want := r.Ban.Expires.Sub(r.Ban.Created), rec.Duration(h.BanTime, n); got != want || r.Ban.Nth != n {
			t.Errorf("ban %d lasts %v (nth %d), want %v", n, got, r.Ban.Nth, want)
		}
		clk.Add(r.Ban.Expires.Sub(r.Ban.Created))
	}
	// Past the recidive window the count starts again.
	clk.Add(rec.Window)
	r, err := s.Hit(ctx, h)
	if err != nil || r.Ban == nil || r.Ban.Nth != 1 {
		t.Fatalf("hit after the window = %+v, %v; want a first ban", r, err)
	}
	// A manual ban counts towards recidive.
	clk.Add(2 * time.Hour)
	b, err := s.Ban(ctx, store.Ban{Jail: "j", Subject: h.Subject, Expires: clk.Now().Add(time.Minute), Reason: "manual"})
	if err != nil || b.Nth != 2 {
		t.Fatalf("Ban = %+v, %v; want nth 2", b, err)
	}
}

func TestBanUnbanBansKnownStats(t *testing.T) {
	addr := redistest.Start(t)
	clk := newClock()
	s := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(t), Now: clk.Now})
	ctx := context.Background()
	subj := "user+net:alice@example.org|2001:db8::/64"
	for _, j := range []string{"a", "b|c"} {
		if _, err := s.Ban(ctx, store.Ban{Jail: j, Subject: subj, Expires: clk.Now().Add(time.Hour), Reason: "x|y"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Ban(ctx, store.Ban{Jail: "a", Subject: "net:192.0.2.1/32", Expires: clk.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	bans, err := s.Bans(ctx)
	if err != nil || len(bans) != 3 {
		t.Fatalf("Bans = %+v, %v; want 3", bans, err)
	}
	clk.Add(time.Minute)
	bans, err = s.Bans(ctx)
	if err != nil || len(bans) != 2 || bans[0].Reason != "x|y" {
		t.Fatalf("Bans after a minute = %+v, %v; want the 2 hour-long bans", bans, err)
	}
	lifted, err := s.Unban(ctx, subj)
	if err != nil || len(lifted) != 2 {
		t.Fatalf("Unban = %+v, %v; want 2 bans", lifted, err)
	}
	lifted, err = s.Unban(ctx, subj)
	if err != nil || lifted == nil || len(lifted) != 0 {
		t.Fatalf("second Unban = %#v, %v; want an empty slice", lifted, err)
	}

	if err := s.Remember(ctx, "alice|2001:db8::/64", time.Hour); err != nil {
		t.Fatal(err)
	}
	a, err := s.Check(ctx, store.Query{Known: "alice|2001:db8::/64"})
	if err != nil || !a.Known {
		t.Fatalf("Check known = %+v, %v", a, err)
	}
	clk.Add(time.Hour)
	a, err = s.Check(ctx, store.Query{Known: "alice|2001:db8::/64"})
	if err != nil || a.Known {
		t.Fatalf("Check known after ttl = %+v, %v", a, err)
	}

	h := store.Hit{Jail: "a", Subject: "net:192.0.2.9/32", Span: time.Minute, MaxRetry: 5, BanTime: time.Hour}
	for range 2 {
		if _, err := s.Hit(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.Stats(ctx, []string{"a", "none"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st["a"], (store.JailStats{Failing: 1, TotalFailed: 2, TotalBanned: 2}); got != want {
		t.Errorf("Stats a = %+v, want %+v", got, want)
	}
	if err := s.Reset(ctx, "a", h.Subject); err != nil {
		t.Fatal(err)
	}
	st, _ = s.Stats(ctx, []string{"a"})
	if st["a"].Failing != 0 {
		t.Errorf("Failing after Reset = %d, want 0", st["a"].Failing)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Check(ctx, store.Query{Subjects: []string{"x"}}); err != store.ErrClosed {
		t.Errorf("Check after Close = %v, want ErrClosed", err)
	}
}

// TestWindowSweep: windows are fields of shared shard hashes (keys.go); a
// window whose failures are all older than findtime is deleted by the next
// Hit that writes its shard once findtime has passed since the last sweep,
// and the shard key itself carries a TTL.
func TestWindowSweep(t *testing.T) {
	addr := redistest.Start(t)
	clk := newClock()
	prefix := freshPrefix(t)
	s := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: prefix, Now: clk.Now})
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	ctx := context.Background()

	a := "net:192.0.2.1/32"
	shard := redisstore.WindowKey(prefix, "j", a)
	var b, c string // two more subjects of the same shard
	for i := 2; c == ""; i++ {
		sub := fmt.Sprintf("net:198.51.%d.%d/32", i/256, i%256)
		if redisstore.WindowKey(prefix, "j", sub) != shard {
			continue
		}
		if b == "" {
			b = sub
		} else {
			c = sub
		}
	}
	hit := func(sub string) {
		t.Helper()
		if _, err := s.Hit(ctx, store.Hit{Jail: "j", Subject: sub, Span: time.Minute, MaxRetry: 5, BanTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	fields := func() []string {
		t.Helper()
		f, err := admin.HKeys(ctx, shard).Result()
		if err != nil {
			t.Fatal(err)
		}
		var subjects []string
		for _, x := range f {
			if !strings.HasPrefix(x, "\x00") {
				subjects = append(subjects, x)
			}
		}
		slices.Sort(subjects)
		return subjects
	}

	hit(a) // the first Hit in the shard sweeps (nothing) and notes the time
	clk.Add(30 * time.Second)
	hit(b) // a's failure is 30 s old: live; no sweep within a minute
	clk.Add(40 * time.Second)
	hit(b) // a's failure is 70 s old and the last sweep 70 s ago: swept
	if got, want := fields(), []string{b}; !slices.Equal(got, want) {
		t.Errorf("shard fields after the sweep = %q, want %q", got, want)
	}
	clk.Add(20 * time.Second)
	hit(c) // b's failures are 20 and 60 s old; the last sweep was 20 s ago: none
	if got := fields(); len(got) != 2 {
		t.Errorf("shard fields = %q, want b and c", got)
	}
	st, err := s.Stats(ctx, []string{"j"})
	if err != nil || st["j"].Failing != 2 || st["j"].TotalFailed != 4 {
		t.Errorf("Stats = %+v, %v; want 2 failing, 4 failed", st, err)
	}
	clk.Add(61 * time.Second) // every failure is now older than findtime
	if st, err := s.Stats(ctx, []string{"j"}); err != nil || st["j"].Failing != 0 {
		t.Errorf("Stats a minute later = %+v, %v; want 0 failing", st, err)
	}
	if ttl, err := admin.PTTL(ctx, shard).Result(); err != nil || ttl <= 0 || ttl > 2*time.Minute+time.Second {
		t.Errorf("PTTL %s = %v, %v; want findtime plus slack", shard, ttl, err)
	}
}

// TestBanOfEarlierVersion: a ban written by an earlier version (its reason
// inside the record) is still seen by Check, Bans and Unban after an upgrade.
func TestBanOfEarlierVersion(t *testing.T) {
	addr := redistest.Start(t)
	clk := newClock()
	prefix := freshPrefix(t)
	s := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: prefix, Now: clk.Now})
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()
	ctx := context.Background()

	sub := "net:192.0.2.9/32"
	created := clk.Now().Add(-time.Minute)
	want := store.Ban{Jail: "dovecot", Subject: sub, Created: created.UTC(), Expires: created.Add(time.Hour).UTC(), Nth: 2, Reason: "auth-failure imap|old"}
	base := prefix + "{" + strings.Trim(prefix, ":") + "}:"
	rec := fmt.Sprintf("%d|%d|%d|2|auth-failure imap|old", want.Expires.UnixMicro(), created.UnixNano(), int64(time.Hour))
	if err := admin.HSet(ctx, base+"b:"+sub, "dovecot", rec).Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.ZAdd(ctx, base+"bx", redis.Z{Score: float64(want.Expires.UnixMicro()), Member: sub}).Err(); err != nil {
		t.Fatal(err)
	}
	if a, err := s.Check(ctx, store.Query{Subjects: []string{sub}}); err != nil || len(a.Bans) != 1 || a.Bans[0] != want {
		t.Errorf("Check = %+v, %v; want %+v", a, err, want)
	}
	if bans, err := s.Bans(ctx); err != nil || len(bans) != 1 || bans[0] != want {
		t.Errorf("Bans = %+v, %v; want %+v", bans, err, want)
	}
	if lifted, err := s.Unban(ctx, sub); err != nil || len(lifted) != 1 || lifted[0] != want {
		t.Errorf("Unban = %+v, %v; want %+v", lifted, err, want)
	}
	if a, err := s.Check(ctx, store.Query{Subjects: []string{sub}}); err != nil || len(a.Bans) != 0 {
		t.Errorf("Check after Unban = %+v, %v; want no ban", a, err)
	}
}
