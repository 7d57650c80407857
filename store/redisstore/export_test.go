package redisstore

import "github.com/redis/go-redis/v9"

// Client returns the store's go-redis client, for tests that count commands.
func (s *Store) Client() redis.UniversalClient { return s.c }
