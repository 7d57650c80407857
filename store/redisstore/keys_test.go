package redisstore

import (
	"strings"
	"testing"
	"time"
)

func TestNewKeys(t *testing.T) {
	tests := []struct {
		prefix, wantWindow, wantErr string
	}{
		{"mailguard:", "mailguard:{mailguard}:w:dovecot|623", ""},
		{"site-a:", "site-a:{site-a}:w:dovecot|623", ""},
		{"app:{mg}:", "app:{mg}:w:dovecot|623", ""},
		{":", ":{mailguard}:w:dovecot|623", ""},
		{"app:{}:", "", "empty or unclosed"},
		{"app:{mg:", "", "empty or unclosed"},
		{"app:}:", "", "unopened"},
	}
	for _, tt := range tests {
		k, err := newKeys(tt.prefix)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("newKeys(%q) = %v, want an error containing %q", tt.prefix, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("newKeys(%q) = %v", tt.prefix, err)
			continue
		}
		if got := k.window("dovecot", "net:192.0.2.1/32"); got != tt.wantWindow {
			t.Errorf("newKeys(%q).window = %q, want %q", tt.prefix, got, tt.wantWindow)
		}
		// Every key starts with the prefix and has the same hash tag.
		tag := hashTag(k.stats)
		for _, key := range []string{k.window("j", "s"), k.shard("j", windowShards-1), k.ban("user:{x}"), k.index("user:{x}"), k.indexShard(banShards - 1), k.legacy, k.known("k"), k.stats, k.events} {
			if !strings.HasPrefix(key, tt.prefix) || hashTag(key) != tag {
				t.Errorf("prefix %q: key %q has tag %q, want prefix and tag %q", tt.prefix, key, hashTag(key), tag)
			}
		}
	}
}

// hashTag is the part of key Redis Cluster hashes.
func hashTag(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return key
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return key
	}
	return key[i+1 : i+1+j]
}

func TestWindowKeysUnambiguous(t *testing.T) {
	k, _ := newKeys("p:")
	if a, b := k.window("a|b", "c"), k.window("a", "b|c"); a == b {
		t.Errorf("window(a|b, c) = window(a, b|c) = %q", a)
	}
}

func TestMemberHidesSecret(t *testing.T) {
	m := member("192.0.2.0/24|alice|{SHA512-CRYPT}$6$secret")
	if strings.Contains(m, "secret") || len(m) != 13 {
		t.Errorf("member = %q, want 13 opaque bytes", m)
	}
	if member("") != "" {
		t.Errorf("member(\"\") is not empty")
	}
}

func TestDurMicros(t *testing.T) {
	for d, want := range map[time.Duration]int64{0: 0, time.Nanosecond: 1, time.Microsecond: 1, time.Second: 1e6, 1001 * time.Nanosecond: 2} {
		if got := durMicros(d); got != want {
			t.Errorf("durMicros(%v) = %d, want %d", d, got, want)
		}
	}
}
