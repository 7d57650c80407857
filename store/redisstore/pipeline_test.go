package redisstore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// TestBatchPartialFailure sends one pipeline in which some calls fail: a
// Check and a Hit on keys of the wrong type (WRONGTYPE inside their
// scripts), a Reset whose script Redis does not have (NOSCRIPT: sent again
// as EVAL, then it works) and a Check whose caller gave up before the batch
// left. Each call gets its own answer or error; the others are answered as
// if they had been sent alone.
func TestBatchPartialFailure(t *testing.T) {
	addr := redistest.Start(t)
	clk := newClock()
	prefix := freshPrefix(t)
	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: addr})
	defer admin.Close()

	// Another node loads the check and hit scripts and places a ban; no one
	// has run the reset script yet, so Redis does not have it.
	other := open(t, redisstore.Options{Addrs: []string{addr}, Prefix: prefix, Now: clk.Now})
	banned := "net:192.0.2.1/32"
	if r, err := other.Hit(ctx, store.Hit{Jail: "j", Subject: banned, Span: time.Minute, MaxRetry: 1, BanTime: time.Hour}); err != nil || r.Ban == nil {
		t.Fatalf("Hit = %+v, %v; want a ban", r, err)
	}
	failing := "net:192.0.2.2/32"
	for range 2 {
		if _, err := other.Hit(ctx, store.Hit{Jail: "j", Subject: failing, Span: time.Minute, MaxRetry: 5, BanTime: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	base := prefix + "{" + strings.Trim(prefix, ":") + "}:"
	wrong := "net:192.0.2.3/32"
	// The Hit on wrong counts in a jail of its own, whose window shard is
	// the wrong type.
	for _, k := range []string{base + "b:" + wrong, redisstore.WindowKey(prefix, "wrongjail", wrong)} {
		if err := admin.Set(ctx, k, "not a hash or a zset", time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := other.Check(ctx, store.Query{Subjects: []string{banned}}); err != nil {
		t.Fatal(err)
	}

	s, held, queued, release, sizes, err := redisstore.OpenHeld(ctx, redisstore.Options{Addrs: []string{addr}, Prefix: prefix, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	defer release()

	var (
		wg                         sync.WaitGroup
		okAns, wrongAns, gaveUpAns store.Answer
		okErr, wrongErr, gaveUpErr error
		hitRes, wrongHitRes        store.HitResult
		hitErr, wrongHitErr        error
		resetErr, rememberErr      error
		gaveUpCtx, gaveUp          = context.WithCancel(ctx)
		q                          = func(sub string) store.Query { return store.Query{Subjects: []string{sub}} }
	)
	defer gaveUp()
	// The first call sends the pipeline, which waits for release; the
	// others queue meanwhile.
	wg.Go(func() { okAns, okErr = s.Check(ctx, q(banned)) })
	for deadline := time.Now().Add(10 * time.Second); !held(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first call did not start a pipeline")
		}
	}
	wg.Go(func() { wrongAns, wrongErr = s.Check(ctx, q(wrong)) })
	wg.Go(func() {
		hitRes, hitErr = s.Hit(ctx, store.Hit{Jail: "j", Subject: "net:192.0.2.4/32", Span: time.Minute, MaxRetry: 5, BanTime: time.Hour})
	})
	wg.Go(func() {
		wrongHitRes, wrongHitErr = s.Hit(ctx, store.Hit{Jail: "wrongjail", Subject: wrong, Span: time.Minute, MaxRetry: 5, BanTime: time.Hour})
	})
	wg.Go(func() { resetErr = s.Reset(ctx, "j", failing) })
	wg.Go(func() { rememberErr = s.Remember(ctx, "user+net:alice@example.org|192.0.2.0/24", time.Hour) })
	gaveUpDone := make(chan struct{})
	go func() {
		defer close(gaveUpDone)
		gaveUpAns, gaveUpErr = s.Check(gaveUpCtx, q(banned))
	}()
	for deadline := time.Now().Add(10 * time.Second); queued() < 6; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued, want 6", queued())
		}
	}
	gaveUp()
	<-gaveUpDone // it gave up while its call was queued
	release()
	wg.Wait()

	// The live calls went out as one pipeline, the NOSCRIPT one again alone.
	var got []int
	for len(got) < 2 {
		select {
		case n := <-sizes:
			got = append(got, n)
		case <-time.After(10 * time.Second):
			t.Fatalf("pipelines sent: %v, want [6 1]", got)
		}
	}
	if got[0] != 6 || got[1] != 1 {
		t.Errorf("pipelines sent: %v, want [6 1] (6 live calls, then the reset again as EVAL)", got)
	}

	if okErr != nil || len(okAns.Bans) != 1 || okAns.Bans[0].Subject != banned {
		t.Errorf("Check(banned) = %+v, %v; want its ban", okAns, okErr)
	}
	if wrongErr == nil || !strings.Contains(wrongErr.Error(), "WRONGTYPE") || len(wrongAns.Bans) != 0 {
		t.Errorf("Check(wrong type) = %+v, %v; want a WRONGTYPE error", wrongAns, wrongErr)
	}
	if hitErr != nil || hitRes.Count != 1 {
		t.Errorf("Hit = %+v, %v; want count 1", hitRes, hitErr)
	}
	if wrongHitErr == nil || !strings.Contains(wrongHitErr.Error(), "WRONGTYPE") || wrongHitRes.Count != 0 {
		t.Errorf("Hit(wrong type) = %+v, %v; want a WRONGTYPE error", wrongHitRes, wrongHitErr)
	}
	if resetErr != nil {
		t.Errorf("Reset (NOSCRIPT, then EVAL) = %v", resetErr)
	}
	if rememberErr != nil {
		t.Errorf("Remember = %v", rememberErr)
	}
	if !errors.Is(gaveUpErr, context.Canceled) || len(gaveUpAns.Bans) != 0 {
		t.Errorf("Check of a caller that gave up = %+v, %v; want context.Canceled", gaveUpAns, gaveUpErr)
	}

	// What the calls did is in Redis: the reset cleared the window, the
	// device is known, and the store goes on working.
	ans, err := other.Check(ctx, store.Query{
		Known:  "user+net:alice@example.org|192.0.2.0/24",
		Counts: []store.Window{{Jail: "j", Subject: failing, Span: time.Minute}, {Jail: "j", Subject: "net:192.0.2.4/32", Span: time.Minute}},
	})
	if err != nil || !ans.Known || ans.Counts[0] != 0 || ans.Counts[1] != 1 {
		t.Errorf("Check after the batch = %+v, %v; want known, counts [0 1]", ans, err)
	}
	if _, err := s.Check(ctx, q(banned)); err != nil {
		t.Errorf("Check after the batch: %v", err)
	}
}
