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
//	base au:SUBJECT   LIST the subject's last Keep records, oldest first; TTL
//	base ai:ID        STRING one record by its id; TTL
var _ store.Auditing = (*Store)(nil)

func (k keys) auditTrail(subject string) string { return k.base + "au:" + subject }
func (k keys) auditID(id string) string         { return k.base + "ai:" + id }

// appendScript stores audit records: each under its id and at the end of the
// trail of each of its subjects, trimmed to its keep, every key with its TTL.
// The keys are in ARGV (they share KEYS[1]'s hash slot).
//
//	KEYS: 1 stats (for the slot only)
//	ARGV: per record: id key, data, ttl_ms, keep, n, then n trail keys
var appendScript = newScript(`
local i = 1
while i <= #ARGV do
  local data, ttl, keep, n = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  redis.call('SET', ARGV[i], data, 'PX', ttl)
  for j = i + 5, i + 4 + n do
    redis.call('RPUSH', ARGV[j], data)
    redis.call('LTRIM', ARGV[j], -keep, -1)
    redis.call('PEXPIRE', ARGV[j], ttl)
  end
  i = i + 5 + n
end
return 1
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
		if r.Keep < 1 || r.TTL <= 0 || r.ID == "" {
			return fmt.Errorf("redisstore: append: id %q, keep %d and ttl %v must be set", r.ID, r.Keep, r.TTL)
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
	for _, r := range recs {
		c.str(s.k.auditID(r.ID))
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

// Trail returns the records of subject: one LRANGE (store.Auditing).
func (s *Store) Trail(ctx context.Context, subject store.Subject) ([][]byte, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	v, err := s.c.LRange(ctx, s.k.auditTrail(subject), 0, -1).Result()
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
