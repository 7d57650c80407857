package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
)

// store.Sharing keys (same hash tag as the rest, see keys.go):
//
//	base sh:SUBJECT   ZSET members (hashed, see member) scored by their last
//	                  Share, µs; at most limit; TTL span
//	base shx          ZSET subjects whose set reached limit, scored by the
//	                  time it did, µs; TTL the longest span
var _ store.Sharing = (*Store)(nil)

func (k keys) share(subject string) string { return k.base + "sh:" + subject }
func (k keys) shareIndex() string          { return k.base + "shx" }

// shareScript records a member and counts the live ones.
//
//	KEYS: 1 the subject's set, 2 the index
//	ARGV: 1 member, 2 now µs, 3 span µs, 4 limit, 5 ttl ms, 6 subject
var shareScript = redis.NewScript(`
local now, span, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
redis.call('ZADD', KEYS[1], now, ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n > limit then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - limit - 1)
  n = limit
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if n >= limit then
  redis.call('ZADD', KEYS[2], now, ARGV[6])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[5]) then
    redis.call('PEXPIRE', KEYS[2], ARGV[5])
  end
end
return n
`)

// sharedScript lists the indexed subjects whose sets still hold at least
// limit live members, and drops the others from the index.
//
//	KEYS: 1 the index
//	ARGV: 1 now µs, 2 span µs, 3 limit, 4 the sets' key prefix
//
// Reply: subject, count, subject, count...
var sharedScript = redis.NewScript(`
local now, span, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for _, sub in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local n = redis.call('ZCOUNT', ARGV[4] .. sub, '(' .. (now - span), '+inf')
  if n >= limit then
    out[#out+1] = sub
    out[#out+1] = n
  elseif n == 0 then
    redis.call('ZREM', KEYS[1], sub)
  end
end
return out
`)

// Share records member at subject: one EVALSHA (store.Sharing).
func (s *Store) Share(ctx context.Context, subject, m string, span time.Duration, limit int) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	if span <= 0 || limit < 1 {
		return 0, fmt.Errorf("redisstore: share: span %v and limit %d must be positive", span, limit)
	}
	n, err := s.b.script(ctx, shareScript, []string{s.k.share(subject), s.k.shareIndex()},
		member(m), micros(s.now()), durMicros(span), limit, (span + slack).Milliseconds(), subject).Int()
	if err != nil {
		return 0, s.fail("share", err)
	}
	return n, nil
}

// Sharers counts the members of subject within span: one ZCOUNT
// (store.Sharing).
func (s *Store) Sharers(ctx context.Context, subject string, span time.Duration) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	min := "(" + strconv.FormatInt(micros(s.now())-durMicros(span), 10)
	n, err := s.c.ZCount(ctx, s.k.share(subject), min, "+inf").Result()
	if err != nil {
		return 0, s.fail("sharers", err)
	}
	return int(n), nil
}

// Shared lists the subjects with at least limit members within span: one
// EVALSHA (store.Sharing).
func (s *Store) Shared(ctx context.Context, span time.Duration, limit int) (map[store.Subject]int, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	v, err := sharedScript.Run(ctx, s.c, []string{s.k.shareIndex()},
		micros(s.now()), durMicros(span), limit, s.k.base+"sh:").Slice()
	if err != nil {
		return nil, s.fail("shared", err)
	}
	out := map[store.Subject]int{}
	r := reply(v)
	for len(r.v) > 0 && r.err == nil {
		sub := r.str()
		out[sub] = r.int()
	}
	if r.err != nil {
		return nil, s.fail("shared", r.err)
	}
	return out, nil
}
