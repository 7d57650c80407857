package redisstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
)

// store.Holding keys (same hash tag as the rest, see keys.go):
//
//	base hw   ZSET the window: admitted and released bans, member a sequence
//	          number, score µs; at most limit+1; TTL span
//	base hq   ZSET held bans, member JAIL \x1f SUBJECT, score the sequence
//	          number (the order they were held in)
//	base hh   HASH the same members → "HELD_µs|BANTIME_µs|REASON"
//	base hx   ZSET the same members scored by their expiry, µs
//	base hs   STRING the sequence
//
// hq, hh, hx and hs live as long as the longest held ban (plus slack).
var _ store.Holding = (*Store)(nil)

func (k keys) hold() []string {
	return []string{k.base + "hw", k.base + "hq", k.base + "hh", k.base + "hx", k.base + "hs"}
}

// holdLib is the start of every holding script.
//
//	KEYS: 1 hw, 2 hq, 3 hh, 4 hx, 5 hs
//	ARGV: 1 now µs, 2 slack ms, then the script's own
const holdLib = `
local now, slack = tonumber(ARGV[1]), tonumber(ARGV[2])
local function expire()
  local ms = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  for _, m in ipairs(ms) do
    redis.call('ZREM', KEYS[2], m)
    redis.call('HDEL', KEYS[3], m)
    redis.call('ZREM', KEYS[4], m)
  end
  return #ms
end
local function count(span)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
  return redis.call('ZCARD', KEYS[1])
end
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function add(span, limit)
  local seq = redis.call('INCR', KEYS[5])
  extend(KEYS[5], math.ceil(span / 1000) + slack)
  redis.call('ZADD', KEYS[1], now, seq)
  local n = redis.call('ZCARD', KEYS[1])
  if n > limit + 1 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - limit - 2) end
  redis.call('PEXPIRE', KEYS[1], math.ceil(span / 1000) + slack)
  return seq
end
local function take(m, out)
  out[#out+1] = m
  out[#out+1] = redis.call('HGET', KEYS[3], m)
  redis.call('ZREM', KEYS[2], m)
  redis.call('HDEL', KEYS[3], m)
  redis.call('ZREM', KEYS[4], m)
end
`

// admitScript: ARGV 3 span µs, 4 limit, 5 member, 6 bantime µs, 7 reason,
// 8 max held. Reply: 1 admitted, 0 held, -1 full.
var admitScript = redis.NewScript(holdLib + `
local span, limit, bt = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
expire()
if redis.call('HEXISTS', KEYS[3], ARGV[5]) == 1 then return 0 end
local n = count(span)
local held = redis.call('ZCARD', KEYS[2])
if held == 0 and n < limit then
  add(span, limit)
  return 1
end
if held >= tonumber(ARGV[8]) then return -1 end
local seq = add(span, limit)
redis.call('ZADD', KEYS[2], seq, ARGV[5])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[1] .. '|' .. ARGV[6] .. '|' .. ARGV[7])
redis.call('ZADD', KEYS[4], now + bt, ARGV[5])
local ttl = math.ceil(bt / 1000) + slack
for i = 2, 5 do extend(KEYS[i], ttl) end
return 0
`)

// drainScript: ARGV 3 span µs, 4 limit. Reply: expired, then member, value...
var drainScript = redis.NewScript(holdLib + `
local span, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {expire()}
local room = limit - count(span)
if room <= 0 then return out end
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, room - 1)) do
  take(m, out)
  add(span, limit)
end
return out
`)

// confirmScript: ARGV 3 subject ("" all), 4 at most this many. Reply:
// expired, then member, value...
var confirmScript = redis.NewScript(holdLib + `
local out = {expire()}
local max = tonumber(ARGV[4])
if ARGV[3] == '' then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, max - 1)) do take(m, out) end
  return out
end
local suffix = '\31' .. ARGV[3]
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(m, -#suffix) == suffix then take(m, out) end
end
return out
`)

// confirmChunk is how many held bans one confirmScript releases: a script
// blocks Redis, and must answer within the read timeout.
const confirmChunk = 500

// heldScript. Reply: expired, then member, value...
var heldScript = redis.NewScript(holdLib + `
local out = {expire()}
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  out[#out+1] = m
  out[#out+1] = redis.call('HGET', KEYS[3], m)
end
return out
`)

func (s *Store) holdArgs(args ...any) []any {
	return append([]any{micros(s.now()), slack.Milliseconds()}, args...)
}

func checkHold(op string, limit int, span time.Duration) error {
	if limit < 1 || span <= 0 {
		return fmt.Errorf("redisstore: %s: limit %d and span %v must be positive", op, limit, span)
	}
	return nil
}

// Admit counts a ban and holds it past the limit: one EVALSHA
// (store.Holding).
func (s *Store) Admit(ctx context.Context, h store.Held, limit int, span time.Duration) (bool, error) {
	if s.closed.Load() {
		return false, store.ErrClosed
	}
	if err := checkHold("admit", limit, span); err != nil {
		return false, err
	}
	if h.BanTime <= 0 {
		return false, fmt.Errorf("redisstore: admit: bantime %v must be positive", h.BanTime)
	}
	n, err := s.b.script(ctx, admitScript, s.k.hold(), s.holdArgs(durMicros(span), limit,
		h.Jail+"\x1f"+h.Subject, durMicros(h.BanTime), h.Reason, store.MaxHeld)...).Int()
	if err != nil {
		return false, s.fail("admit", err)
	}
	if n < 0 {
		return false, store.ErrHoldFull
	}
	return n == 1, nil
}

// Drain releases held bans while the window has room: one EVALSHA
// (store.Holding).
func (s *Store) Drain(ctx context.Context, limit int, span time.Duration) ([]store.Held, int, error) {
	if s.closed.Load() {
		return nil, 0, store.ErrClosed
	}
	if err := checkHold("drain", limit, span); err != nil {
		return nil, 0, err
	}
	return s.heldReply(ctx, "drain", drainScript, durMicros(span), limit)
}

// Confirm releases the held bans of subject, or all: one EVALSHA
// (store.Holding).
func (s *Store) Confirm(ctx context.Context, subject store.Subject) ([]store.Held, int, error) {
	if s.closed.Load() {
		return nil, 0, store.ErrClosed
	}
	var out []store.Held
	expired := 0
	for {
		hs, exp, err := s.heldReply(ctx, "confirm", confirmScript, subject, confirmChunk)
		out, expired = append(out, hs...), expired+exp
		if err != nil || subject != "" || len(hs) < confirmChunk {
			return out, expired, err
		}
	}
}

// Held lists the held bans: one EVALSHA (store.Holding).
func (s *Store) Held(ctx context.Context) ([]store.Held, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	out, _, err := s.heldReply(ctx, "held", heldScript)
	return out, err
}

// Rate counts the window's bans within span: one ZCOUNT (store.Holding).
func (s *Store) Rate(ctx context.Context, span time.Duration) (int, error) {
	if s.closed.Load() {
		return 0, store.ErrClosed
	}
	min := "(" + strconv.FormatInt(micros(s.now())-durMicros(span), 10)
	n, err := s.c.ZCount(ctx, s.k.hold()[0], min, "+inf").Result()
	if err != nil {
		return 0, s.fail("rate", err)
	}
	return int(n), nil
}

func (s *Store) heldReply(ctx context.Context, op string, sc *redis.Script, args ...any) ([]store.Held, int, error) {
	v, err := s.b.script(ctx, sc, s.k.hold(), s.holdArgs(args...)...).Slice()
	if err != nil {
		return nil, 0, s.fail(op, err)
	}
	r := reply(v)
	expired := r.int()
	var out []store.Held
	for len(r.v) > 0 && r.err == nil {
		m, val := r.str(), r.str()
		h, err := parseHeld(m, val)
		if err != nil {
			return nil, 0, s.fail(op, err)
		}
		out = append(out, h)
	}
	if r.err != nil {
		return nil, 0, s.fail(op, r.err)
	}
	return out, expired, nil
}

// parseHeld decodes a held ban's member and value.
func parseHeld(m, val string) (store.Held, error) {
	jail, subject, ok := strings.Cut(m, "\x1f")
	parts := strings.SplitN(val, "|", 3)
	if !ok || len(parts) != 3 {
		return store.Held{}, fmt.Errorf("malformed held ban %q", m)
	}
	at, err1 := strconv.ParseInt(parts[0], 10, 64)
	bt, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil {
		return store.Held{}, fmt.Errorf("malformed held ban %q", m)
	}
	return store.Held{Jail: jail, Subject: subject, Held: time.UnixMicro(at),
		BanTime: time.Duration(bt) * time.Microsecond, Reason: parts[2]}, nil
}
