package redisstore

import "github.com/redis/go-redis/v9"

// The Lua scripts. Each runs as one EVALSHA (go-redis falls back to EVAL on
// NOSCRIPT, which also reloads the script cache) and touches keys of one
// hash slot only: every key is under the store's hash tag (see keys.go).
//
// Time comes from the caller's clock, never from Redis TIME: ARGV carries now
// in microseconds since the Unix epoch (exact in a Lua double until the year
// 2255) and, where a ban is created, in nanoseconds as an opaque string.
// Key TTLs are relative (PEXPIRE), a logical duration plus a slack, so a test
// clock that runs ahead of the wall clock never makes Redis drop live data.
//
// A ban record, the value of field jail in the ban hash of its subject, is
//
//	expires_us|created_ns|duration_ns|nth|reason
//
// Scripts compare expires_us with now (coarse, µs); Go rebuilds the exact
// Expires = created + duration and filters again at nanosecond precision.

// luaLib is prepended to every script.
const luaLib = `
local function f(n) return string.format('%.0f', n) end
-- extend makes key k live at least ms milliseconds from now.
local function extend(k, ms)
  local t = redis.call('PTTL', k)
  if t == -1 or (t >= 0 and t < ms) then redis.call('PEXPIRE', k, f(ms)) end
end
local function expof(rec) return tonumber(string.match(rec, '^%d+')) end
-- putban stores rec as jail's ban on subject, indexes it, counts it and
-- publishes it; seq is the jail's ban counter after this ban.
local function putban(bkey, idx, stats, events, jail, subject, rec, exp, now, slack, node, maxlen, streamttl)
  redis.call('HSET', bkey, jail, rec)
  local ttl = math.ceil((exp - now) / 1000) + slack
  extend(bkey, ttl)
  redis.call('ZADD', idx, 'GT', f(exp), subject)
  extend(idx, ttl)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'k', 'ban', 'j', jail, 's', subject, 'r', rec, 'n', node)
  extend(events, streamttl)
end
-- history counts the bans of (jail, subject) within rwin µs before now,
-- records this one as member m and returns its rank n (1: a first ban).
local function history(hkey, now, rwin, m, slack, histmax)
  if rwin <= 0 then return 1 end
  redis.call('ZREMRANGEBYSCORE', hkey, '-inf', f(now - rwin))
  local n = redis.call('ZCARD', hkey) + 1
  redis.call('ZADD', hkey, f(now), m)
  redis.call('ZREMRANGEBYRANK', hkey, 0, -(histmax + 1))
  extend(hkey, math.ceil(rwin / 1000) + slack)
  return n
end
`

// hitScript records a failure, tests the threshold and bans, atomically.
//
//	KEYS: 1 window  2 ban hash  3 recidive history  4 ban index
//	      5 failing index of the jail  6 stats  7 events
//	ARGV: 1 now_us  2 now_ns  3 span_us  4 maxretry  5 member ('' = none)
//	      6 bantime_ns  7 recidive window_us  8 factor  9 maxtime_ns
//	      10 reason  11 jail  12 subject  13 node  14 slack_ms
//	      15 stream maxlen  16 stream ttl_ms  17 stats ttl_ms  18 history max
//
// Reply: {count} or {count, record} when this hit banned.
var hitScript = redis.NewScript(luaLib + `
local now, span, maxretry = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
local jail, subject, slack = ARGV[11], ARGV[12], tonumber(ARGV[14])
local rwin = tonumber(ARGV[7])
local seq = redis.call('HINCRBY', KEYS[6], 'f:' .. jail, 1)
redis.call('HSET', KEYS[6], 'rw', ARGV[7])
extend(KEYS[6], tonumber(ARGV[17]))
local m = ARGV[5]
if m == '' then m = f(seq) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', f(now - span))
redis.call('ZADD', KEYS[1], f(now), m)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(maxretry + 2))
local count = redis.call('ZCARD', KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', f(now))
local bantime = tonumber(ARGV[6])
-- The threshold bans, replacing an active ban of the jail (a new one
-- within the recidive window, so it escalates).
if bantime > 0 and count >= maxretry then
  local bseq = redis.call('HINCRBY', KEYS[6], 'b:' .. jail, 1)
  local n = history(KEYS[3], now, rwin, f(bseq), slack, tonumber(ARGV[18]))
  -- store.Recidive.Duration, in the same float64 arithmetic.
  local factor, maxt = tonumber(ARGV[8]), tonumber(ARGV[9])
  local d, ds = bantime, ARGV[6]
  if rwin > 0 and factor > 1 and n > 1 then
    local done = false
    for i = 1, n - 1 do
      d = d * factor
      if maxt > 0 and d >= maxt then d = maxt; ds = ARGV[9]; done = true; break end
      if d > 2^62 then d = 2^62; ds = f(d); done = true; break end
    end
    if not done then d = math.floor(d); ds = f(d) end
  end
  if maxt > 0 and d > maxt then d = maxt; ds = ARGV[9] end
  local exp = now + math.floor(d / 1000)
  local rec = f(exp) .. '|' .. ARGV[2] .. '|' .. ds .. '|' .. f(n) .. '|' .. ARGV[10]
  putban(KEYS[2], KEYS[4], KEYS[6], KEYS[7], jail, subject, rec, exp, now, slack, ARGV[13], ARGV[15], tonumber(ARGV[16]))
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[5], subject)
  return {count, rec}
end
redis.call('ZADD', KEYS[5], f(now + span), subject)
local ttl = math.ceil(span / 1000) + slack
extend(KEYS[5], ttl)
redis.call('PEXPIRE', KEYS[1], f(ttl))
return {count}
`)

// banScript places (or replaces) a ban given by the caller.
//
//	KEYS: 1 ban hash  2 recidive history  3 ban index  4 stats  5 events
//	ARGV: 1 now_us  2 jail  3 subject  4 expires_us  5 created_ns
//	      6 duration_ns  7 reason  8 node  9 slack_ms  10 stream maxlen
//	      11 stream ttl_ms  12 default recidive window_us  13 history max
//	      14 stats ttl_ms
//
// The recidive window is the one the last Hit carried (stats field rw), or
// the default before any Hit.
//
// Reply: the record.
var banScript = redis.NewScript(luaLib + `
local now, jail, subject, slack = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[9])
local rwin = tonumber(redis.call('HGET', KEYS[4], 'rw') or ARGV[12])
local bseq = redis.call('HINCRBY', KEYS[4], 'b:' .. jail, 1)
extend(KEYS[4], tonumber(ARGV[14]))
local n = history(KEYS[2], now, rwin, f(bseq), slack, tonumber(ARGV[13]))
local exp = tonumber(ARGV[4])
local rec = ARGV[4] .. '|' .. ARGV[5] .. '|' .. ARGV[6] .. '|' .. f(n) .. '|' .. ARGV[7]
putban(KEYS[1], KEYS[3], KEYS[4], KEYS[5], jail, subject, rec, exp, now, slack, ARGV[8], ARGV[10], tonumber(ARGV[11]))
return rec
`)

// checkScript answers a store.Query.
//
//	KEYS: the ban hashes of the n subjects, then the known-device key if
//	      any, then the windows
//	ARGV: 1 now_us  2 n  3 '1' if a known-device key is given  4.. span_us
//	      of each window
//
// Reply: {nbans, (subject index, jail, record) × nbans, known, counts...}.
var checkScript = redis.NewScript(luaLib + `
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, nb = {0}, 0
for i = 1, n do
  local h = redis.call('HGETALL', KEYS[i])
  for j = 1, #h, 2 do
    if expof(h[j + 1]) >= now then
      out[#out + 1] = i; out[#out + 1] = h[j]; out[#out + 1] = h[j + 1]
      nb = nb + 1
    end
  end
end
out[1] = nb
local k = n + 1
local known = 0
if ARGV[3] == '1' then
  local v = redis.call('GET', KEYS[k])
  if v and tonumber(v) > now then known = 1 end
  k = k + 1
end
out[#out + 1] = known
for w = 4, #ARGV do
  out[#out + 1] = redis.call('ZCOUNT', KEYS[k], '(' .. f(now - tonumber(ARGV[w])), '+inf')
  k = k + 1
end
return out
`)

// unbanScript lifts every jail's ban on a subject.
//
//	KEYS: 1 ban hash  2 ban index  3 events
//	ARGV: 1 now_us  2 subject  3 node  4 stream maxlen  5 stream ttl_ms
//
// Reply: {jail, record, ...} of the bans lifted.
var unbanScript = redis.NewScript(luaLib + `
local now = tonumber(ARGV[1])
local h = redis.call('HGETALL', KEYS[1])
local out = {}
for j = 1, #h, 2 do
  if expof(h[j + 1]) >= now then
    out[#out + 1] = h[j]; out[#out + 1] = h[j + 1]
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'k', 'unban', 'j', h[j], 's', ARGV[2], 'r', h[j + 1], 'n', ARGV[3])
    extend(KEYS[3], tonumber(ARGV[5]))
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return out
`)

// bansScript lists one page of the active bans. The ban hashes it reads are
// not in KEYS (they are found through the index) but share its hash slot.
//
//	KEYS: 1 ban index
//	ARGV: 1 now_us  2 offset  3 page size  4 ban hash key prefix
//
// Reply: {subjects in this page, (subject, jail, record)...}.
var bansScript = redis.NewScript(luaLib + `
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. f(now))
local off = tonumber(ARGV[2])
local subs = redis.call('ZRANGE', KEYS[1], off, off + tonumber(ARGV[3]) - 1)
local out = {#subs}
for _, s in ipairs(subs) do
  local h = redis.call('HGETALL', ARGV[4] .. s)
  for j = 1, #h, 2 do
    if expof(h[j + 1]) >= now then
      out[#out + 1] = s; out[#out + 1] = h[j]; out[#out + 1] = h[j + 1]
    end
  end
end
return out
`)

// resetScript forgets the failures of a subject in a jail.
//
//	KEYS: 1 window  2 failing index of the jail
//	ARGV: 1 subject
var resetScript = redis.NewScript(`
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
`)

// statsScript reads the counters of some jails.
//
//	KEYS: 1 stats, then the failing index of each jail
//	ARGV: 1 now_us, then the jail names
//
// Reply: {failing, total failed, total banned} per jail.
var statsScript = redis.NewScript(luaLib + `
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', f(now))
  out[#out + 1] = redis.call('ZCARD', KEYS[i])
  out[#out + 1] = redis.call('HGET', KEYS[1], 'f:' .. ARGV[i]) or '0'
  out[#out + 1] = redis.call('HGET', KEYS[1], 'b:' .. ARGV[i]) or '0'
end
return out
`)
