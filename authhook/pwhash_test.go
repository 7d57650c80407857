package authhook

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

// Vectors recorded from Dovecot 2.3.19 (auth_policy_hash_mech sha256 over
// nonce, login, NUL, password; the top auth_policy_hash_truncate bits).
func TestPasswordHash(t *testing.T) {
	tests := []struct {
		nonce, login, password string
		bits                   int
		want                   string
	}{
		{"nonce", "user@example.com", "secret", 12, "065d"},
		{"nonce", "user@example.com", "secret", 8, "65"},
		{"nonce", "user@example.com", "secret", 13, "0cba"},
		{"nonce", "user@example.com", "", 12, "09eb"},
		{"nonce", "carol@example.org", "pass123", 12, "0653"},
	}
	for _, tt := range tests {
		if got := passwordHash(tt.nonce, tt.login, tt.password, tt.bits); got != tt.want {
			t.Errorf("passwordHash(%q, %q, password, %d) = %q, want %q", tt.nonce, tt.login, tt.bits, got, tt.want)
		}
	}
	if got := passwordHash("nonce", "user@example.com", "secret", 0); len(got) != 64 || got[:3] != "65d" {
		t.Errorf("passwordHash(bits 0) = %q, want the whole hash starting 65d", got)
	}
}

// passwordHash computes what Dovecot sends as pwhash (%{hashed_password})
// with auth_policy_hash_mech = sha256: the top bits (auth_policy_hash_truncate;
// 0 means the whole hash) of SHA-256(nonce || login || 0x00 || password),
// big-endian, as lowercase hex of ceil(bits/8) bytes. mailguard never needs
// it to decide anything; tests use it to predict Dovecot's value.
func passwordHash(nonce, login, password string, bits int) string {
	h := sha256.New()
	h.Write([]byte(nonce))
	h.Write([]byte(login))
	h.Write([]byte{0})
	h.Write([]byte(password))
	sum := h.Sum(nil)
	if bits <= 0 || bits >= 8*len(sum) {
		return hex.EncodeToString(sum)
	}
	n := (bits + 7) / 8
	out := make([]byte, n)
	copy(out, sum[:n])
	// Shift the n bytes right so that the value is the top bits as a number.
	shift := uint(8*n - bits)
	if shift > 0 {
		for i := n - 1; i >= 0; i-- {
			out[i] >>= shift
			if i > 0 {
				out[i] |= out[i-1] << (8 - shift)
			}
		}
	}
	return hex.EncodeToString(out)
}
