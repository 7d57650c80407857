package redisstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
)

// The TOTP state (store.TOTPStore), under the store's hash tag like every
// other key:
//
//	base t:e:USER     HASH the enrolment: s sealed secret, c created ns,
//	                  n last used step; no TTL (an enrolment lasts until
//	                  disabled)
//	base t:ex         SET enrolled users (Enrolments); no TTL
//	base t:a:USER     HASH approvals: field PREFIX = expires_us|created_ns|
//	                  expires_ns; TTL its latest approval
//	base t:ax         ZSET users with approvals, score = latest expiry µs
//	                  (Approvals of everyone); TTL its latest approval
//	base t:p:USER     LIST pending logins, the last added first:
//	                  expires_us|at_ns|prefix|addr|protocol; TTL the last
//	                  added's
//	base t:k:ID       HASH an enrolment link: u user, s sealed secret,
//	                  x expires µs, e expires ns; TTL its expiry
//
// Check reads t:e and t:a of Query.TOTPUser in its own script; the calls
// below are rare (an enrolment, an approval, a refused login of an enrolled
// user), one script or command each, outside the request pipeline.
func (k keys) enrol(user string) string     { return k.base + "t:e:" + user }
func (k keys) enrolIndex() string           { return k.base + "t:ex" }
func (k keys) approvals(user string) string { return k.base + "t:a:" + user }
func (k keys) approvalIndex() string        { return k.base + "t:ax" }
func (k keys) pending(user string) string   { return k.base + "t:p:" + user }
func (k keys) token(id string) string       { return k.base + "t:k:" + id }

var useStepScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local last = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('HSET', KEYS[1], 'n', ARGV[1])
return 1
`)

// approveScript: KEYS 1 approvals 2 approval index; ARGV 1 now_us 2 prefix
// 3 value 4 expires_us 5 user 6 slack_ms.
var approveScript = redis.NewScript(`
local now, exp, slack = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[6])
local ttl = math.ceil((exp - now) / 1000) + slack
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], 'GT', ARGV[4], ARGV[5])
for i = 1, 2 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
`)

// revokeScript: KEYS 1 approvals; ARGV 1 now_us 2 prefix (” = all).
var revokeScript = redis.NewScript(`
local now, n = tonumber(ARGV[1]), 0
local function live(v) return v and tonumber(string.match(v, '^%d+')) > now end
if ARGV[2] ~= '' then
  if live(redis.call('HGET', KEYS[1], ARGV[2])) then n = 1 end
  redis.call('HDEL', KEYS[1], ARGV[2])
  return n
end
local all = redis.call('HGETALL', KEYS[1])
for i = 2, #all, 2 do
  if live(all[i]) then n = n + 1 end
end
redis.call('DEL', KEYS[1])
return n
`)

// addPendingScript: KEYS 1 pending list; ARGV 1 now_us 2 entry 3 prefix
// 4 protocol 5 max 6 ttl_ms.
var addPendingScript = redis.NewScript(`
local now, max = tonumber(ARGV[1]), tonumber(ARGV[5])
local keep = {ARGV[2]}
for _, v in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local exp, pfx, proto = string.match(v, '^(%d+)|%d+|([^|]*)|[^|]*|(.*)$')
  if exp and tonumber(exp) > now and not (pfx == ARGV[3] and proto == ARGV[4]) and #keep < max then
    keep[#keep + 1] = v
  end
end
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(keep))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return #keep
`)

// forgetScript: KEYS 1 pending list; ARGV the prefixes to drop.
var forgetScript = redis.NewScript(`
local drop = {}
for i = 1, #ARGV do drop[ARGV[i]] = true end
for _, v in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local pfx = string.match(v, '^%d+|%d+|([^|]*)|')
  if pfx and drop[pfx] then redis.call('LREM', KEYS[1], 0, v) end
end
return 1
`)

// disenrolScript: KEYS 1 enrolment 2 index 3 approvals 4 pending
// 5 approval index; ARGV 1 user.
var disenrolScript = redis.NewScript(`
local was = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[1])
return was
`)

// takeTokenScript: KEYS 1 token; ARGV 1 now_us 2 '1' to remove.
var takeTokenScript = redis.NewScript(`
local v = redis.call('HMGET', KEYS[1], 'u', 's', 'x', 'e')
if not v[1] or not v[3] or tonumber(v[3]) <= tonumber(ARGV[1]) then return false end
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
return {v[1], v[2] or '', v[4] or '0'}
`)

func (s *Store) open() error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	return nil
}

// Enrol stores e, replacing any enrolment of e.User.
func (s *Store) Enrol(ctx context.Context, e store.Enrolment) error {
	if err := s.open(); err != nil {
		return err
	}
	if e.User == "" || len(e.Secret) == 0 {
		return errors.New("redisstore: enrol: a user and a secret are required")
	}
	if e.Created.IsZero() {
		e.Created = s.now()
	}
	_, err := s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.k.enrol(e.User))
		p.HSet(ctx, s.k.enrol(e.User), "s", e.Secret, "c", e.Created.UnixNano(), "n", e.LastStep)
		p.SAdd(ctx, s.k.enrolIndex(), e.User)
		return nil
	})
	if err != nil {
		return s.fail("enrol", err)
	}
	return nil
}

// Enrolment returns user's enrolment.
func (s *Store) Enrolment(ctx context.Context, user string) (store.Enrolment, error) {
	if err := s.open(); err != nil {
		return store.Enrolment{}, err
	}
	v, err := s.c.HMGet(ctx, s.k.enrol(user), "s", "c", "n").Result()
	if err != nil {
		return store.Enrolment{}, s.fail("enrolment", err)
	}
	e, ok, err := decodeEnrolment(user, v)
	if err != nil {
		return store.Enrolment{}, s.fail("enrolment", err)
	}
	if !ok {
		return store.Enrolment{}, store.ErrNotFound
	}
	return e, nil
}

func decodeEnrolment(user string, v []any) (store.Enrolment, bool, error) {
	sec, ok := v[0].(string)
	if !ok {
		return store.Enrolment{}, false, nil
	}
	c, _ := v[1].(string)
	n, _ := v[2].(string)
	created, err1 := strconv.ParseInt(c, 10, 64)
	step, err2 := strconv.ParseInt(n, 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return store.Enrolment{}, false, fmt.Errorf("bad enrolment of %q: %w", user, err)
	}
	return store.Enrolment{User: user, Secret: []byte(sec), Created: time.Unix(0, created), LastStep: step}, true, nil
}

// Enrolments lists the enrolments, by user, without secrets.
func (s *Store) Enrolments(ctx context.Context) ([]store.Enrolment, error) {
	if err := s.open(); err != nil {
		return nil, err
	}
	users, err := s.c.SMembers(ctx, s.k.enrolIndex()).Result()
	if err != nil {
		return nil, s.fail("enrolments", err)
	}
	slices.Sort(users)
	cmds := make([]*redis.SliceCmd, len(users))
	_, err = s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, u := range users {
			cmds[i] = p.HMGet(ctx, s.k.enrol(u), "s", "c", "n")
		}
		return nil
	})
	if err != nil {
		return nil, s.fail("enrolments", err)
	}
	out := []store.Enrolment{}
	for i, u := range users {
		e, ok, err := decodeEnrolment(u, cmds[i].Val())
		if err != nil {
			return nil, s.fail("enrolments", err)
		}
		if ok {
			e.Secret = nil
			out = append(out, e)
		}
	}
	return out, nil
}

// Disenrol removes user's enrolment, approvals and pending logins.
func (s *Store) Disenrol(ctx context.Context, user string) (bool, error) {
	if err := s.open(); err != nil {
		return false, err
	}
	n, err := disenrolScript.Run(ctx, s.c, []string{s.k.enrol(user), s.k.enrolIndex(), s.k.approvals(user),
		s.k.pending(user), s.k.approvalIndex()}, user).Int()
	if err != nil {
		return false, s.fail("disenrol", err)
	}
	return n > 0, nil
}

// UseStep records step as user's last used step if it is after the stored one.
func (s *Store) UseStep(ctx context.Context, user string, step int64) (bool, error) {
	if err := s.open(); err != nil {
		return false, err
	}
	n, err := useStepScript.Run(ctx, s.c, []string{s.k.enrol(user)}, step).Int()
	if err != nil {
		return false, s.fail("use step", err)
	}
	if n < 0 {
		return false, store.ErrNotFound
	}
	return n == 1, nil
}

// Approve stores an approval.
func (s *Store) Approve(ctx context.Context, a store.Approval) error {
	if err := s.open(); err != nil {
		return err
	}
	if a.User == "" || !a.Prefix.IsValid() {
		return errors.New("redisstore: approve: a user and a prefix are required")
	}
	now := s.now()
	if a.Created.IsZero() {
		a.Created = now
	}
	if !a.Expires.After(a.Created) {
		return fmt.Errorf("redisstore: approve %s: expires is not after created", a.Prefix)
	}
	val := fmt.Sprintf("%d|%d|%d", micros(a.Expires), a.Created.UnixNano(), a.Expires.UnixNano())
	err := approveScript.Run(ctx, s.c, []string{s.k.approvals(a.User), s.k.approvalIndex()},
		micros(now), a.Prefix.Masked().String(), val, micros(a.Expires), a.User, slack.Milliseconds()).Err()
	if err != nil {
		return s.fail("approve", err)
	}
	return nil
}

// Revoke removes user's approval of p, or all of them.
func (s *Store) Revoke(ctx context.Context, user string, p netip.Prefix) (int, error) {
	if err := s.open(); err != nil {
		return 0, err
	}
	pfx := ""
	if p.IsValid() {
		pfx = p.Masked().String()
	}
	n, err := revokeScript.Run(ctx, s.c, []string{s.k.approvals(user)}, micros(s.now()), pfx).Int()
	if err != nil {
		return 0, s.fail("revoke", err)
	}
	return n, nil
}

// Approvals lists active approvals of user, or everyone's.
func (s *Store) Approvals(ctx context.Context, user string) ([]store.Approval, error) {
	if err := s.open(); err != nil {
		return nil, err
	}
	now := s.now()
	users := []string{user}
	if user == "" {
		var err error
		users, err = s.c.ZRangeByScore(ctx, s.k.approvalIndex(), &redis.ZRangeBy{
			Min: "(" + strconv.FormatInt(micros(now), 10), Max: "+inf"}).Result()
		if err != nil {
			return nil, s.fail("approvals", err)
		}
		slices.Sort(users)
	}
	cmds := make([]*redis.MapStringStringCmd, len(users))
	_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, u := range users {
			cmds[i] = p.HGetAll(ctx, s.k.approvals(u))
		}
		return nil
	})
	if err != nil {
		return nil, s.fail("approvals", err)
	}
	out := []store.Approval{}
	for i, u := range users {
		var mine []store.Approval
		for pfx, v := range cmds[i].Val() {
			a, err := decodeApproval(u, pfx, v)
			if err != nil {
				return nil, s.fail("approvals", err)
			}
			if a.Expires.After(now) {
				mine = append(mine, a)
			}
		}
		slices.SortFunc(mine, func(a, b store.Approval) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
		out = append(out, mine...)
	}
	return out, nil
}

func decodeApproval(user, pfx, v string) (store.Approval, error) {
	p, err := netip.ParsePrefix(pfx)
	f := strings.Split(v, "|")
	if err != nil || len(f) != 3 {
		return store.Approval{}, fmt.Errorf("bad approval %q of %q", pfx, user)
	}
	c, err1 := strconv.ParseInt(f[1], 10, 64)
	e, err2 := strconv.ParseInt(f[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return store.Approval{}, fmt.Errorf("bad approval %q of %q: %w", pfx, user, err)
	}
	return store.Approval{User: user, Prefix: p, Created: time.Unix(0, c), Expires: time.Unix(0, e)}, nil
}

// AddPending keeps a refused login for ttl.
func (s *Store) AddPending(ctx context.Context, p store.Pending, ttl time.Duration) error {
	if err := s.open(); err != nil {
		return err
	}
	if p.User == "" || !p.Prefix.IsValid() || ttl <= 0 {
		return errors.New("redisstore: add pending: a user, a prefix and a positive ttl are required")
	}
	now := s.now()
	if p.At.IsZero() {
		p.At = now
	}
	pfx := p.Prefix.Masked().String()
	addr := ""
	if p.Addr.IsValid() {
		addr = p.Addr.String()
	}
	entry := fmt.Sprintf("%d|%d|%s|%s|%s", micros(p.At.Add(ttl)), p.At.UnixNano(), pfx, addr, p.Protocol)
	err := addPendingScript.Run(ctx, s.c, []string{s.k.pending(p.User)}, micros(now), entry, pfx, p.Protocol,
		store.MaxPending, (p.At.Add(ttl).Sub(now) + slack).Milliseconds()).Err()
	if err != nil {
		return s.fail("add pending", err)
	}
	return nil
}

// Pending lists user's live pending logins, the last added first.
func (s *Store) Pending(ctx context.Context, user string) ([]store.Pending, error) {
	if err := s.open(); err != nil {
		return nil, err
	}
	vs, err := s.c.LRange(ctx, s.k.pending(user), 0, -1).Result()
	if err != nil {
		return nil, s.fail("pending", err)
	}
	now := micros(s.now())
	out := []store.Pending{}
	for _, v := range vs {
		f := strings.SplitN(v, "|", 5)
		if len(f) != 5 {
			return nil, s.fail("pending", fmt.Errorf("bad pending login %q", v))
		}
		exp, err1 := strconv.ParseInt(f[0], 10, 64)
		at, err2 := strconv.ParseInt(f[1], 10, 64)
		p, err3 := netip.ParsePrefix(f[2])
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, s.fail("pending", fmt.Errorf("bad pending login %q: %w", v, err))
		}
		if exp <= now {
			continue
		}
		pe := store.Pending{User: user, Prefix: p, Protocol: f[4], At: time.Unix(0, at)}
		pe.Addr, _ = netip.ParseAddr(f[3])
		out = append(out, pe)
	}
	return out, nil
}

// Forget removes user's pending logins from the prefixes ps.
func (s *Store) Forget(ctx context.Context, user string, ps []netip.Prefix) error {
	if err := s.open(); err != nil {
		return err
	}
	var args []any
	for _, p := range ps {
		if p.IsValid() {
			args = append(args, p.Masked().String())
		}
	}
	if len(args) == 0 {
		return nil
	}
	if err := forgetScript.Run(ctx, s.c, []string{s.k.pending(user)}, args...).Err(); err != nil {
		return s.fail("forget", err)
	}
	return nil
}

// PutToken stores an enrolment link.
func (s *Store) PutToken(ctx context.Context, id string, t store.Token) error {
	if err := s.open(); err != nil {
		return err
	}
	if id == "" || t.User == "" {
		return errors.New("redisstore: put token: an id and a user are required")
	}
	ttl := t.Expires.Sub(s.now())
	if ttl <= 0 {
		return errors.New("redisstore: put token: expires is not in the future")
	}
	_, err := s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.k.token(id), "u", t.User, "s", t.Secret, "x", micros(t.Expires), "e", t.Expires.UnixNano())
		p.PExpire(ctx, s.k.token(id), ttl+slack)
		return nil
	})
	if err != nil {
		return s.fail("put token", err)
	}
	return nil
}

// TakeToken returns (and with remove deletes) the token under id.
func (s *Store) TakeToken(ctx context.Context, id string, remove bool) (store.Token, error) {
	if err := s.open(); err != nil {
		return store.Token{}, err
	}
	rm := "0"
	if remove {
		rm = "1"
	}
	v, err := takeTokenScript.Run(ctx, s.c, []string{s.k.token(id)}, micros(s.now()), rm).StringSlice()
	if isNil(err) {
		return store.Token{}, store.ErrNotFound
	}
	if err != nil {
		return store.Token{}, s.fail("take token", err)
	}
	if len(v) != 3 {
		return store.Token{}, s.fail("take token", fmt.Errorf("bad token reply of %d values", len(v)))
	}
	e, err := strconv.ParseInt(v[2], 10, 64)
	if err != nil {
		return store.Token{}, s.fail("take token", fmt.Errorf("bad token expiry: %w", err))
	}
	return store.Token{User: v[0], Secret: []byte(v[1]), Expires: time.Unix(0, e)}, nil
}

var _ store.TOTPStore = (*Store)(nil)
