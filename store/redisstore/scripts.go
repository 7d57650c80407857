package redisstore

import (
	"strings"

	"github.com/redis/go-redis/v9"
)

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
// A ban record, as scripts return it and as events carry it, is
//
//	expires_us|created_ns|duration_ns|nth|reason
//
// Scripts compare expires_us with now (coarse, µs); Go rebuilds the exact
// Expires = created + duration and filters again at nanosecond precision.
//
// The ban hash of a subject (keys.go) holds, per jail J:
//
//	J        expires_us|created_ns|duration_ns|nth (the record without the
//	         reason: ≤ 60 bytes); a record written by an earlier version
//	         holds its reason too (4 or more '|'), and is read as it is
//	\0r J    the reason, when not empty
//	\0h J    the recidive history: ban times in µs, base 36, ascending,
//	         space-separated
//
// so that every value stays under Redis's hash-max-listpack-value (64
// bytes) and the hash keeps the compact listpack encoding (a record with its
// reason, ~70 bytes, made Redis convert the hash to a hashtable, ~2.5× the
// memory). Fields starting with a NUL byte are not jails: no jail name
// starts with one.

// luaHelpers are the Lua functions the scripts share, each of which uses
// only helpers before it. lua prepends to a script those it uses: Redis runs
// a script's whole text on every call, so a helper it does not need would
// cost a closure per call.
var luaHelpers = []luaHelper{
	{"f", `
local function f(n) return string.format('%.0f', n) end
`},
	{"b36", `
-- b36 writes a non-negative integer below 2^53 in base 36.
local B36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local function b36(n)
  local s = ''
  repeat
    local d = n % 36
    s = string.sub(B36, d + 1, d + 1) .. s
    n = (n - d) / 36
  until n == 0
  return s
end
`},
	{"extend", `
-- extend makes key k live at least ms milliseconds from now.
local function extend(k, ms)
  local t = redis.call('PTTL', k)
  if t == -1 or (t >= 0 and t < ms) then redis.call('PEXPIRE', k, f(ms)) end
end
`},
	{"expof", `
local function expof(rec) return tonumber(string.match(rec, '^%d+')) end
`},
	{"NUL", `
local NUL = string.char(0)
`},
	{"isjail", `
-- isjail tells a jail's record field of a ban hash from its other fields.
local function isjail(field) return string.byte(field, 1) ~= 0 end
`},
	{"records", `
-- records returns the records of a ban hash read with HGETALL, reasons
-- joined: {jail, record, ...}; only those expiring at or after now when
-- now is given.
local function records(h, now)
  local reason = {}
  for j = 1, #h, 2 do
    if string.sub(h[j], 1, 2) == NUL .. 'r' then reason[string.sub(h[j], 3)] = h[j + 1] end
  end
  local out = {}
  for j = 1, #h, 2 do
    if isjail(h[j]) and (not now or expof(h[j + 1]) >= now) then
      local rec = h[j + 1]
      if select(2, string.gsub(rec, '|', '|')) < 4 then rec = rec .. '|' .. (reason[h[j]] or '') end
      out[#out + 1] = h[j]; out[#out + 1] = rec
    end
  end
  return out
end
`},
	{"putban", `
-- putban stores rec (without the reason) as jail's ban on subject, indexes
-- it and publishes it.
local function putban(bkey, idx, events, jail, subject, rec, reason, exp, now, slack, node, maxlen, streamttl)
  if reason == '' then
    redis.call('HSET', bkey, jail, rec)
    redis.call('HDEL', bkey, NUL .. 'r' .. jail)
  else
    redis.call('HSET', bkey, jail, rec, NUL .. 'r' .. jail, reason)
  end
  local ttl = math.ceil((exp - now) / 1000) + slack
  extend(bkey, ttl)
  redis.call('ZADD', idx, 'GT', f(exp), subject)
  extend(idx, ttl)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'k', 'ban', 'j', jail, 's', subject, 'r', rec .. '|' .. reason, 'n', node)
  extend(events, streamttl)
end
`},
	{"wparse", `
-- Failure windows (keys.go): field subject of a window shard holds the
-- failures of that subject as space-separated entries, ascending by time:
-- the time in µs, base 36, then the member ('~...') if the Hit named one.
-- wparse reads one into times and members.
local function wparse(v)
  local ts, ms = {}, {}
  if v then
    for t, m in string.gmatch(v, '(%w+)(~?[^ ]*)') do
      ts[#ts + 1] = tonumber(t, 36); ms[#ms + 1] = m
    end
  end
  return ts, ms
end
`},
	{"wlive", `
-- wlive counts the failures of window value v after cut µs.
local function wlive(v, cut)
  local n = 0
  if v then
    for t in string.gmatch(v, '(%w+)~?[^ ]*') do
      if tonumber(t, 36) > cut then n = n + 1 end
    end
  end
  return n
end
`},
	{"wsweep", `
-- wsweep deletes the fields of shard k with no failure after cut, at most
-- once per span: field NUL s holds the time of the last sweep.
local function wsweep(k, now, span)
  local last = tonumber(redis.call('HGET', k, NUL .. 's') or '')
  if last and last <= now and now - last < span then return end
  local h = redis.call('HGETALL', k)
  for j = 1, #h, 2 do
    if isjail(h[j]) and wlive(h[j + 1], now - span) == 0 then redis.call('HDEL', k, h[j]) end
  end
  redis.call('HSET', k, NUL .. 's', f(now))
end
`},
	{"history", `
-- history counts the bans of jail on the subject of ban hash bkey within
-- rwin µs before now, records this one and returns its rank n (1: a first
-- ban). The times are kept in field NUL h jail, for rwin.
local function history(bkey, jail, now, rwin, slack, histmax)
  if rwin <= 0 then return 1 end
  local field = NUL .. 'h' .. jail
  local old = redis.call('HGET', bkey, field)
  local ts = {}
  if old then
    for x in string.gmatch(old, '%w+') do
      local t = tonumber(x, 36)
      if t > now - rwin then ts[#ts + 1] = t end
    end
  end
  local n = #ts + 1
  local i = #ts + 1
  while i > 1 and ts[i - 1] > now do i = i - 1 end
  table.insert(ts, i, now)
  while #ts > histmax do table.remove(ts, 1) end
  local parts = {}
  for k = 1, #ts do parts[k] = b36(ts[k]) end
  redis.call('HSET', bkey, field, table.concat(parts, ' '))
  extend(bkey, math.ceil(rwin / 1000) + slack)
  return n
end
`},
	{"hitban", `
-- hitban makes the ban of a Hit that reached its threshold, in hitScript's
-- KEYS and ARGV (settleScript has the same): escalated by the recidive
-- history, stored, published, and the subject's window cleared. It
-- returns the record with its reason.
local function hitban(now, jail, subject, rwin, slack)
  redis.call('HINCRBY', KEYS[4], 'b:' .. jail, 1)
  local n = history(KEYS[2], jail, now, rwin, slack, tonumber(ARGV[18]))
  -- store.Recidive.Duration, in the same float64 arithmetic.
  local bantime, factor, maxt = tonumber(ARGV[6]), tonumber(ARGV[8]), tonumber(ARGV[9])
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
  local rec = f(exp) .. '|' .. ARGV[2] .. '|' .. ds .. '|' .. f(n)
  putban(KEYS[2], KEYS[3], KEYS[5], jail, subject, rec, ARGV[10], exp, now, slack, ARGV[13], ARGV[15], tonumber(ARGV[16]))
  redis.call('HDEL', KEYS[1], subject)
  return rec .. '|' .. ARGV[10]
end
`},
}

// hitScript records a failure, tests the threshold and bans, atomically.
//
//	KEYS: 1 window shard  2 ban hash (with the recidive history)
//	      3 ban index shard  4 stats  5 events
//	ARGV: 1 now_us  2 now_ns  3 span_us  4 maxretry  5 member ('' = none)
//	      6 bantime_ns  7 recidive window_us  8 factor  9 maxtime_ns
//	      10 reason  11 jail  12 subject  13 node  14 slack_ms
//	      15 stream maxlen  16 stream ttl_ms  17 stats ttl_ms  18 history max
//
// The jail's span is kept in stats (s:JAIL) for Stats' count of failing
// subjects. Reply: {count} or {count, record} when this hit banned.
var hitScript = newScript(lua(`
local now, span, maxretry = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
local jail, subject, slack = ARGV[11], ARGV[12], tonumber(ARGV[14])
local rwin = tonumber(ARGV[7])
redis.call('HSET', KEYS[4], 'rw', ARGV[7], 's:' .. jail, ARGV[3])
extend(KEYS[4], tonumber(ARGV[17]))
local m = ARGV[5]
local ts, ms = wparse(redis.call('HGET', KEYS[1], subject))
-- Keep the failures inside the window; a member seen inside it is not a
-- failure: nothing changes.
local t2, m2, seen = {}, {}, false
for i = 1, #ts do
  if ts[i] > now - span then
    t2[#t2 + 1] = ts[i]; m2[#m2 + 1] = ms[i]
    if m ~= '' and ms[i] == m then seen = true end
  end
end
if seen then return {#t2} end
redis.call('HINCRBY', KEYS[4], 'f:' .. jail, 1)
local i = #t2 + 1
while i > 1 and t2[i - 1] > now do i = i - 1 end
table.insert(t2, i, now); table.insert(m2, i, m)
while #t2 > maxretry + 1 do table.remove(t2, 1); table.remove(m2, 1) end
local count = #t2
local bantime = tonumber(ARGV[6])
-- The threshold bans, replacing an active ban of the jail (a new one
-- within the recidive window, so it escalates).
if bantime > 0 and count >= maxretry then
  return {count, hitban(now, jail, subject, rwin, slack)}
end
local parts = {}
for k = 1, #t2 do parts[k] = b36(t2[k]) .. m2[k] end
redis.call('HSET', KEYS[1], subject, table.concat(parts, ' '))
extend(KEYS[1], math.ceil(span / 1000) + slack)
wsweep(KEYS[1], now, span)
return {count}
`))

// settleScript is hitScript for a store.Hit with Settle: it records no
// failure, and bans when the failures inside the window, plus this one,
// reach maxretry. KEYS and ARGV as hitScript's (the member is not used).
// Reply: {count} or {count, record} when it banned, count being the
// failures inside the window.
var settleScript = newScript(lua(`
local now, span, maxretry = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
local jail, subject, slack = ARGV[11], ARGV[12], tonumber(ARGV[14])
redis.call('HSET', KEYS[4], 'rw', ARGV[7], 's:' .. jail, ARGV[3])
extend(KEYS[4], tonumber(ARGV[17]))
local count = wlive(redis.call('HGET', KEYS[1], subject), now - span)
if tonumber(ARGV[6]) > 0 and count + 1 >= maxretry then
  return {count, hitban(now, jail, subject, tonumber(ARGV[7]), slack)}
end
return {count}
`))

// banScript places (or replaces) a ban given by the caller.
//
//	KEYS: 1 ban hash (with the recidive history)  2 ban index shard
//	      3 stats  4 events
//	ARGV: 1 now_us  2 jail  3 subject  4 expires_us  5 created_ns
//	      6 duration_ns  7 reason  8 node  9 slack_ms  10 stream maxlen
//	      11 stream ttl_ms  12 default recidive window_us  13 history max
//	      14 stats ttl_ms
//
// The recidive window is the one the last Hit carried (stats field rw), or
// the default before any Hit.
//
// Reply: the record.
var banScript = redis.NewScript(lua(`
local now, jail, subject, slack = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[9])
local rwin = tonumber(redis.call('HGET', KEYS[3], 'rw') or ARGV[12])
redis.call('HINCRBY', KEYS[3], 'b:' .. jail, 1)
extend(KEYS[3], tonumber(ARGV[14]))
local n = history(KEYS[1], jail, now, rwin, slack, tonumber(ARGV[13]))
local exp = tonumber(ARGV[4])
local rec = ARGV[4] .. '|' .. ARGV[5] .. '|' .. ARGV[6] .. '|' .. f(n)
putban(KEYS[1], KEYS[2], KEYS[4], jail, subject, rec, ARGV[7], exp, now, slack, ARGV[8], ARGV[10], tonumber(ARGV[11]))
return rec .. '|' .. ARGV[7]
`))

// checkScript answers a store.Query.
//
//	KEYS: the ban hashes of the n subjects, then the known-device key if
//	      any, then the TOTP enrolment and approval keys if ARGV[4] is not
//	      empty, then the window shards
//	ARGV: 1 now_us  2 n  3 '1' if a known-device key is given  4 the TOTP
//	      prefix to look up ('' = none)  5.. span_us and subject of each
//	      window
//
// Reply: {nbans, (subject index, jail, record) × nbans, known, enrolled,
// approved, counts...}.
var checkScript = newScript(lua(`
local now, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, nb = {0}, 0
for i = 1, n do
  local r = records(redis.call('HGETALL', KEYS[i]), now)
  for j = 1, #r, 2 do
    out[#out + 1] = i; out[#out + 1] = r[j]; out[#out + 1] = r[j + 1]
    nb = nb + 1
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
local enrolled, approved = 0, 0
if ARGV[4] ~= '' then
  if redis.call('EXISTS', KEYS[k]) == 1 then
    enrolled = 1
    local v = redis.call('HGET', KEYS[k + 1], ARGV[4])
    if v and tonumber(string.match(v, '^%d+')) > now then approved = 1 end
  end
  k = k + 2
end
out[#out + 1] = enrolled
out[#out + 1] = approved
for w = 5, #ARGV, 2 do
  out[#out + 1] = wlive(redis.call('HGET', KEYS[k], ARGV[w + 1]), now - tonumber(ARGV[w]))
  k = k + 1
end
return out
`))

// unbanScript lifts every jail's ban on a subject.
//
//	KEYS: 1 ban hash  2 ban index shard  3 events  4 the ban index of
//	      earlier versions
//	ARGV: 1 now_us  2 subject  3 node  4 stream maxlen  5 stream ttl_ms
//
// Reply: {jail, record, ...} of the bans lifted. The recidive history in
// the hash stays.
var unbanScript = redis.NewScript(lua(`
local now = tonumber(ARGV[1])
local h = redis.call('HGETALL', KEYS[1])
local r = records(h)
local out = {}
for j = 1, #r, 2 do
  if expof(r[j + 1]) >= now then
    out[#out + 1] = r[j]; out[#out + 1] = r[j + 1]
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'k', 'unban', 'j', r[j], 's', ARGV[2], 'r', r[j + 1], 'n', ARGV[3])
    extend(KEYS[3], tonumber(ARGV[5]))
  end
end
-- The records and reasons go; the recidive history stays (Unban keeps it).
for j = 1, #h, 2 do
  if isjail(h[j]) or string.sub(h[j], 1, 2) == NUL .. 'r' then redis.call('HDEL', KEYS[1], h[j]) end
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return out
`))

// bansScript lists the active bans of some ban index shards. The shards
// and the ban hashes it reads are not in KEYS (they are found through the
// shard number and the index) but share the slot of KEYS[1].
//
//	KEYS: 1 stats (for the slot only)
//	ARGV: 1 now_us  2 first shard  3 number of shards  4 subjects per page
//	      5 ban index shard key prefix  6 ban hash key prefix
//
// It reads whole shards from the first one until it has read a page of
// subjects or the last shard. Reply: {next shard, (subject, jail, record)...}.
var bansScript = redis.NewScript(lua(`
local now, n, nshards, page = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out, seen = {0}, 0
while n < nshards and seen < page do
  local idx = ARGV[5] .. n
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. f(now))
  local subs = redis.call('ZRANGE', idx, 0, -1)
  seen = seen + #subs
  for _, s in ipairs(subs) do
    local r = records(redis.call('HGETALL', ARGV[6] .. s), now)
    for j = 1, #r, 2 do
      out[#out + 1] = s; out[#out + 1] = r[j]; out[#out + 1] = r[j + 1]
    end
  end
  n = n + 1
end
out[1] = n
return out
`))

// legacyBansScript lists one page of the active bans of the single ban
// index of earlier versions (keys.go), which a store upgraded in place still
// has until its bans expire.
//
//	KEYS: 1 ban index
//	ARGV: 1 now_us  2 offset  3 page size  4 ban hash key prefix
//
// Reply: {subjects in this page, (subject, jail, record)...}.
var legacyBansScript = redis.NewScript(lua(`
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. f(now))
local off = tonumber(ARGV[2])
local subs = redis.call('ZRANGE', KEYS[1], off, off + tonumber(ARGV[3]) - 1)
local out = {#subs}
for _, s in ipairs(subs) do
  local r = records(redis.call('HGETALL', ARGV[4] .. s), now)
  for j = 1, #r, 2 do
    out[#out + 1] = s; out[#out + 1] = r[j]; out[#out + 1] = r[j + 1]
  end
end
return out
`))

// resetScript forgets the failures of a subject in a jail.
//
//	KEYS: 1 window shard
//	ARGV: 1 subject
var resetScript = newScript(`
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
`)

// statsScript reads the counters of some jails.
//
//	KEYS: 1 stats
//	ARGV: the jail names
//
// Reply: {span_us or 0, total failed, total banned} per jail.
var statsScript = redis.NewScript(`
local out = {}
for i = 1, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[1], 's:' .. ARGV[i]) or '0'
  out[#out + 1] = redis.call('HGET', KEYS[1], 'f:' .. ARGV[i]) or '0'
  out[#out + 1] = redis.call('HGET', KEYS[1], 'b:' .. ARGV[i]) or '0'
end
return out
`)

// failingScript counts the subjects with a failure inside the window in
// some window shards of one jail. The shards are not in KEYS (Stats reads
// them in pages) but share the store's hash slot, which KEYS names.
//
//	KEYS: 1 stats (for the slot only)
//	ARGV: 1 now_us  2 span_us  3.. shard keys
//
// Reply: the count.
var failingScript = redis.NewScript(lua(`
local cut = tonumber(ARGV[1]) - tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV do
  local h = redis.call('HGETALL', ARGV[i])
  for j = 1, #h, 2 do
    if isjail(h[j]) and wlive(h[j + 1], cut) > 0 then n = n + 1 end
  end
end
return n
`))

// luaHelper is one shared Lua function (or constant) and its definition.
type luaHelper struct{ name, src string }

// lua returns body preceded by the helpers it uses, directly or through
// other helpers, in luaHelpers' order. A helper is used when its name
// appears as a word in the code (comments aside) that follows it.
func lua(body string) string {
	need := luaCode(body)
	use := make([]bool, len(luaHelpers))
	for i := len(luaHelpers) - 1; i >= 0; i-- {
		if usesName(need, luaHelpers[i].name) {
			use[i] = true
			need += luaCode(luaHelpers[i].src)
		}
	}
	var b strings.Builder
	for i, h := range luaHelpers {
		if use[i] {
			b.WriteString(h.src)
		}
	}
	b.WriteString(body)
	return b.String()
}

// luaCode returns src without its comments (from -- to the end of a line;
// no script has -- inside a string).
func luaCode(src string) string {
	var b strings.Builder
	for line := range strings.Lines(src) {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i] + "\n"
		}
		b.WriteString(line)
	}
	return b.String()
}

// usesName reports whether name occurs in src as a whole Lua word.
func usesName(src, name string) bool {
	word := func(c byte) bool {
		return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
	}
	for i := 0; ; {
		j := strings.Index(src[i:], name)
		if j < 0 {
			return false
		}
		j += i
		end := j + len(name)
		if (j == 0 || !word(src[j-1])) && (end == len(src) || !word(src[end])) {
			return true
		}
		i = j + 1
	}
}
