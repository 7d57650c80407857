package contrib

import (
	"strings"
	"testing"
)

func TestDovecot(t *testing.T) {
	for _, tc := range []struct {
		major, minor int
		want         string
	}{
		{2, 3, Dovecot23}, {2, 4, Dovecot24}, {2, 5, Dovecot24}, {2, 2, ""}, {3, 0, ""},
	} {
		name, text, err := Dovecot(tc.major, tc.minor)
		if name != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("Dovecot(%d, %d) = %q, %v; want %q", tc.major, tc.minor, name, err, tc.want)
		}
		if tc.want != "" && !strings.Contains(string(text), "auth_policy_server_url") {
			t.Errorf("Dovecot(%d, %d): %s does not set auth_policy_server_url", tc.major, tc.minor, name)
		}
	}
	if b, err := File(PostfixMain); err != nil || !strings.Contains(string(b), "check_policy_service") {
		t.Errorf("File(%q): %v, no check_policy_service", PostfixMain, err)
	}
}
