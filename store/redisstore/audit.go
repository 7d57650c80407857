package redisstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
)

// store.Auditing keys (same hash tag as the rest, see keys.go):
//
//	base au:SUBJECT   LIST the ids of the subject's last Keep records, oldest
//	                  first (a version before this one kept whole records
//	                  there, which Trail still reads); TTL
//	base ai:ID        STRING one record by its id; TTL
//
// A record is stored once, under its id, however many trails it joins:
// keeping it whole in each trail cost Redis a copy per subject, in memory
// and in CPU (an audited failure joins two or three trails).
var _ store.Auditing = (*Store)(nil)

func (k keys) auditTrail(subject string) string { return k.base + "au:" + subject }
func (k keys) auditID(id string) string         { return k.base + "ai:" + id }
func (k keys) auditIDs() string                 { return k.base + "ai:" }

// appendScript stores audit records: each under its id, and its id at the
// end of the trail of each of its subjects, trimmed to its keep, every key
// with its TTL. The keys are in ARGV (they share KEYS[1]'s hash slot).
//
//	KEYS: 1 stats (for the slot only)
//	ARGV: 1 the id key prefix, then per record: id, data, ttl_ms, keep, n,
//	      then n trail keys
var appendScript = newScript(`
local i = 2
while i <= #ARGV do
  local id, ttl, keep, n = ARGV[i], ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  redis.call('SET', ARGV[1] .. id, ARGV[i + 1], 'PX', ttl)
  for j = i + 5, i + 4 + n do
    if redis.call('RPUSH', ARGV[j], id) > keep then redis.call('LTRIM', ARGV[j], -keep, -1) end
    redis.call('PEXPIRE', ARGV[j], ttl)
  end
  i = i + 5 + n
end
return 1
`)

// trailScript reads a trail: the records of its ids, oldest first, leaving
// out those expired; an entry that is a whole record (written by an earlier
// version, which kept records in the trail: they start with '{') is
// returned as it is.
//
//	KEYS: 1 the trail
//	ARGV: 1 the id key prefix
var trailScript = newScript(`
local out = {}
for _, e in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if string.sub(e, 1, 1) == '{' then
    out[#out + 1] = e
  else
    local v = redis.call('GET', ARGV[1] .. e)
    if v then out[#out + 1] = v end
  end
end
return out
`)

// Append adds records (store.Auditing): one script call for the batch, sent
// in a pipeline with the request path's calls. A batch of the recorder's
// largest size (512) runs in Redis about as long as the ~2,000 commands it
// replaces did in one pipeline.
func (s *Store) Append(ctx context.Context, recs []store.AuditRecord) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	for _, r := range recs {
		if r.Keep < 1 || r.TTL <= 0 || r.ID == "" || r.ID[0] == '{' {
			return fmt.Errorf("redisstore: append: id %q, keep %d and ttl %v must be set (an id not starting with '{')", r.ID, r.Keep, r.TTL)
		}
	}
	if len(recs) == 0 {
		return nil
	}
	c := newCall()
	defer c.release()
	c.keyBuf = append(c.keyBuf, s.k.stats...)
	c.key()
	c.eval(appendScript)
	c.str(s.k.auditIDs())
	for _, r := range recs {
		c.str(r.ID)
		c.str(string(r.Data))
		c.int(max(r.TTL.Milliseconds(), 1))
		c.int(int64(r.Keep))
		c.int(int64(len(r.Subjects)))
		for _, sub := range r.Subjects {
			c.str(s.k.auditTrail(sub))
		}
	}
	if _, err := s.b.run(ctx, c); err != nil {
		return s.fail("append", err)
	}
	return nil
}

// Trail returns the records of subject: one script call (store.Auditing).
func (s *Store) Trail(ctx context.Context, subject store.Subject) ([][]byte, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	v, err := s.b.script(ctx, trailScript.Script, []string{s.k.auditTrail(subject)}, s.k.auditIDs()).StringSlice()
	if err != nil {
		return nil, s.fail("trail", err)
	}
	out := make([][]byte, len(v))
	for i, r := range v {
		out[i] = []byte(r)
	}
	return out, nil
}

// Record returns the record with id: one GET (store.Auditing).
func (s *Store) Record(ctx context.Context, id string) ([]byte, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	v, err := s.c.Get(ctx, s.k.auditID(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, s.fail("record", err)
	}
	return v, nil
}
