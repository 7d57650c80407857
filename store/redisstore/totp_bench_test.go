package redisstore_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// BenchmarkCheckTOTP is BenchmarkCheck's after-auth query with and without
// the TOTP lookup of a user who has not enrolled (others have): what
// totp.enabled adds to the one round trip, in Redis CPU per call.
func BenchmarkCheckTOTP(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(map[bool]string{false: "off", true: "on"}[on], func(b *testing.B) {
			addr := redistest.Start(b)
			s := open(b, redisstore.Options{Addrs: []string{addr}, Prefix: freshPrefix(b)})
			ctx := context.Background()
			for i := range 100 {
				if err := s.Enrol(ctx, store.Enrolment{User: fmt.Sprintf("user%d@example.org", i), Secret: []byte("sealed")}); err != nil {
					b.Fatal(err)
				}
			}
			var n atomic.Int64
			b.SetParallelism(4)
			defer reportServerTime(b, addr)()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1) % 1000
					ip := fmt.Sprintf("198.51.%d.%d", i/256, i%256)
					q := store.Query{
						Subjects: []string{"net:" + ip + "/32", "user:alice@example.org", "user+net:alice@example.org|" + ip + "/32"},
						Known:    "user+net:alice@example.org|" + ip + "/32",
						Counts:   []store.Window{{Jail: "dovecot", Subject: "net:" + ip + "/32", Span: 10 * time.Minute}},
					}
					if on {
						q.TOTPUser, q.TOTPPrefix = "alice@example.org", netip.MustParsePrefix(fmt.Sprintf("198.51.%d.0/24", i/256))
					}
					if _, err := s.Check(ctx, q); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
