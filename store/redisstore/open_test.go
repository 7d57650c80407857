package redisstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// TestOpenURLAndAuth: a redis:// URL with a password and a database, an
// ACL user, and the errors of bad settings.
func TestOpenURLAndAuth(t *testing.T) {
	srv := redistest.StartServer(t, redistest.Config{Args: []string{"--requirepass", "s3cret"}})
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr(), Password: "s3cret"})
	defer admin.Close()
	ctx := context.Background()
	if err := admin.Do(ctx, "ACL", "SETUSER", "mailguard", "on", ">pw", "~mg:*", "+@all", "-@dangerous").Err(); err != nil {
		t.Fatal(err)
	}

	s := open(t, redisstore.Options{URL: "redis://:s3cret@" + srv.Addr() + "/3", Prefix: "mg:"})
	if _, err := s.Ban(ctx, store.Ban{Jail: "manual", Subject: "net:192.0.2.1/32", Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	keys, err := admin.Keys(ctx, "*").Result()
	if err != nil || len(keys) != 0 {
		t.Errorf("keys in db 0 = %v, %v; want none (the URL chose db 3)", keys, err)
	}
	db3 := redis.NewClient(&redis.Options{Addr: srv.Addr(), Password: "s3cret", DB: 3})
	defer db3.Close()
	keys, err = db3.Keys(ctx, "*").Result()
	if err != nil || len(keys) == 0 {
		t.Errorf("keys in db 3 = %v, %v; want the store's", keys, err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "mg:{mg}:") {
			t.Errorf("key %q lacks the prefix and tag", k)
		}
		if ttl, _ := db3.PTTL(ctx, k).Result(); ttl <= 0 {
			t.Errorf("key %q has no TTL (%v)", k, ttl)
		}
	}

	acl := open(t, redisstore.Options{Addrs: []string{srv.Addr()}, Username: "mailguard", Password: "pw", Prefix: "mg:"})
	if err := acl.Ping(ctx); err != nil {
		t.Errorf("Ping as ACL user: %v", err)
	}
	// The README's ACL (+@all -@dangerous on the prefix) is enough for
	// every call, the commands inside the scripts included.
	if r, err := acl.Hit(ctx, store.Hit{Jail: "j", Subject: "net:192.0.2.2/32", Span: time.Minute, MaxRetry: 1, BanTime: time.Hour}); err != nil || r.Ban == nil {
		t.Errorf("Hit as ACL user = %+v, %v", r, err)
	}
	if _, err := acl.Check(ctx, store.Query{Subjects: []string{"net:192.0.2.2/32"}, Known: "k", Counts: []store.Window{{Jail: "j", Subject: "s", Span: time.Minute}}}); err != nil {
		t.Errorf("Check as ACL user: %v", err)
	}
	if _, err := acl.Bans(ctx); err != nil {
		t.Errorf("Bans as ACL user: %v", err)
	}
	if _, err := acl.Unban(ctx, "net:192.0.2.2/32"); err != nil {
		t.Errorf("Unban as ACL user: %v", err)
	}
	if _, err := acl.Stats(ctx, []string{"j"}); err != nil {
		t.Errorf("Stats as ACL user: %v", err)
	}
	if err := acl.Remember(ctx, "k", time.Hour); err != nil {
		t.Errorf("Remember as ACL user: %v", err)
	}

	bad := []struct {
		name string
		o    redisstore.Options
	}{
		{"wrong password", redisstore.Options{Addrs: []string{srv.Addr()}, Password: "nope"}},
		{"ACL user outside its keys", redisstore.Options{Addrs: []string{srv.Addr()}, Username: "mailguard", Password: "pw", Prefix: "other:"}},
		{"URL and Addrs", redisstore.Options{URL: "redis://" + srv.Addr(), Addrs: []string{srv.Addr()}}},
		{"bad URL", redisstore.Options{URL: "http://" + srv.Addr()}},
		{"MasterName without Addrs", redisstore.Options{MasterName: "m"}},
		{"bad prefix", redisstore.Options{Addrs: []string{srv.Addr()}, Password: "s3cret", Prefix: "x{}"}},
	}
	for _, tt := range bad {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := redisstore.Open(ctx, tt.o)
		cancel()
		if err == nil {
			s.Close()
			t.Errorf("Open with %s succeeded", tt.name)
		}
	}
}

// TestSentinel opens the store through a Sentinel (MasterName + Addrs).
func TestSentinel(t *testing.T) {
	master := redistest.Start(t)
	sentinel := redistest.StartSentinel(t, "mymaster", master)
	clk := newClock()
	s := open(t, redisstore.Options{Addrs: []string{sentinel}, MasterName: "mymaster", Prefix: freshPrefix(t), Now: clk.Now})
	ctx := context.Background()
	h := store.Hit{Jail: "j", Subject: "net:192.0.2.1/32", Span: time.Minute, MaxRetry: 1, BanTime: time.Hour}
	if r, err := s.Hit(ctx, h); err != nil || r.Ban == nil {
		t.Fatalf("Hit through Sentinel = %+v, %v", r, err)
	}
	bans, err := s.Bans(ctx)
	if err != nil || len(bans) != 1 {
		t.Errorf("Bans through Sentinel = %+v, %v", bans, err)
	}
}

// A node starts while Redis is down: Open logs and returns a Store whose
// calls fail, and which works once Redis is back.
func TestOpenWhileRedisDown(t *testing.T) {
	srv := redistest.StartServer(t, redistest.Config{})
	srv.Kill()
	ctx := context.Background()
	octx, cancel := context.WithTimeout(ctx, 3*time.Second)
	s, err := redisstore.Open(octx, redisstore.Options{Addrs: []string{srv.Addr()}, Prefix: freshPrefix(t)})
	cancel()
	if err != nil {
		t.Fatalf("Open with Redis down = %v, want a Store", err)
	}
	defer s.Close()
	if _, err := s.Check(ctx, store.Query{Subjects: []string{"net:192.0.2.1/32"}}); err == nil {
		t.Fatal("Check with Redis down: no error")
	}
	srv.Restart()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := s.Check(ctx, store.Query{Subjects: []string{"net:192.0.2.1/32"}})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Check 15s after Redis came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
