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

// Append adds records: one pipelined round trip for the whole batch
// (store.Auditing).
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
	_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, r := range recs {
			p.Set(ctx, s.k.auditID(r.ID), r.Data, r.TTL)
			for _, sub := range r.Subjects {
				k := s.k.auditTrail(sub)
				p.RPush(ctx, k, r.Data)
				p.LTrim(ctx, k, int64(-r.Keep), -1)
				p.PExpire(ctx, k, r.TTL)
			}
		}
		return nil
	})
	if err != nil {
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
