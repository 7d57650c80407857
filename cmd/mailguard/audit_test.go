package main

import (
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/config"
)

// TestAuditBounds: a subject keeps maxretry × 2 events of the largest
// banning jail (rate limits aside), for the longest findtime, bantime or,
// with escalation, recidive time.
func TestAuditBounds(t *testing.T) {
	def := config.Defaults()
	noEsc := def
	noEsc.Recidive.Factor = 1
	for _, tc := range []struct {
		name string
		c    config.Config
		keep int
		ttl  time.Duration
	}{
		{"defaults", def, 40, 7 * 24 * time.Hour}, // dovecot-user: maxretry 20; recidive 168h
		{"no escalation", noEsc, 40, time.Hour},   // the longest findtime/bantime: 1h
	} {
		keep, ttl := auditBounds(tc.c, jails(tc.c, nil))
		if keep != tc.keep || ttl != tc.ttl {
			t.Errorf("%s: auditBounds = %d, %v; want %d, %v", tc.name, keep, ttl, tc.keep, tc.ttl)
		}
	}
}
