package authhook

import "testing"

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
		if got := PasswordHash(tt.nonce, tt.login, tt.password, tt.bits); got != tt.want {
			t.Errorf("PasswordHash(%q, %q, password, %d) = %q, want %q", tt.nonce, tt.login, tt.bits, got, tt.want)
		}
	}
	if got := PasswordHash("nonce", "user@example.com", "secret", 0); len(got) != 64 || got[:3] != "65d" {
		t.Errorf("PasswordHash(bits 0) = %q, want the whole hash starting 65d", got)
	}
}
