package contrib

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"slices"
	"testing"

	"github.com/mailguard/mailguard/internal/testenv"
)

// The Roundcube plugin's choice of the browser's address, run by the real
// PHP (testdata/client_ip.php stubs Roundcube's plugin base class).
// X-Forwarded-For counts only when the peer is a trusted proxy, and only
// up to the first hop that is not one.
func TestRoundcubeClientIP(t *testing.T) {
	php := testenv.Command(t, "php")
	type server map[string]string
	for _, tc := range []struct {
		name    string
		server  server
		proxies []string
		want    string // "" for null: no ID is sent
		bad     []string
	}{
		{"direct", server{"REMOTE_ADDR": "192.0.2.7"}, nil, "192.0.2.7", nil},
		{"direct IPv6, normalised", server{"REMOTE_ADDR": "2001:DB8:0:0::1"}, nil, "2001:db8::1", nil},
		{"IPv4-mapped", server{"REMOTE_ADDR": "::ffff:192.0.2.7"}, nil, "192.0.2.7", nil},
		{"no REMOTE_ADDR", server{}, nil, "", nil},
		{"REMOTE_ADDR not an address", server{"REMOTE_ADDR": "unix:"}, nil, "", nil},
		{"forged XFF, no proxies", server{"REMOTE_ADDR": "192.0.2.7", "HTTP_X_FORWARDED_FOR": "10.9.9.9"}, nil, "192.0.2.7", nil},
		{"forged XFF, peer not a proxy", server{"REMOTE_ADDR": "192.0.2.7", "HTTP_X_FORWARDED_FOR": "10.9.9.9"}, []string{"198.51.100.1"}, "192.0.2.7", nil},
		{"one proxy", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "192.0.2.7"}, []string{"198.51.100.1"}, "192.0.2.7", nil},
		{"proxy network", server{"REMOTE_ADDR": "10.1.2.3", "HTTP_X_FORWARDED_FOR": "192.0.2.7"}, []string{"10.0.0.0/8"}, "192.0.2.7", nil},
		{"odd prefix length", server{"REMOTE_ADDR": "10.1.2.3", "HTTP_X_FORWARDED_FOR": "192.0.2.7"}, []string{"10.0.0.0/15"}, "192.0.2.7", nil},
		{"outside odd prefix", server{"REMOTE_ADDR": "10.2.2.3", "HTTP_X_FORWARDED_FOR": "192.0.2.7"}, []string{"10.0.0.0/15"}, "10.2.2.3", nil},
		{"browser forges the left part", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "10.9.9.9, 192.0.2.7"}, []string{"198.51.100.1"}, "192.0.2.7", nil},
		{"two proxies", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "10.9.9.9, 192.0.2.7, 198.51.100.2"}, []string{"198.51.100.0/24"}, "192.0.2.7", nil},
		{"all hops trusted", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "198.51.100.3,198.51.100.2"}, []string{"198.51.100.0/24"}, "198.51.100.3", nil},
		{"garbage hop stops at the proxy", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "192.0.2.7, evil\r\nx"}, []string{"198.51.100.1"}, "198.51.100.1", nil},
		{"garbage further left", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "evil, 192.0.2.7"}, []string{"198.51.100.1"}, "192.0.2.7", nil},
		{"empty hop", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "192.0.2.7, "}, []string{"198.51.100.1"}, "198.51.100.1", nil},
		{"hop with port", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "192.0.2.7:5555"}, []string{"198.51.100.1"}, "192.0.2.7", nil},
		{"IPv6 hop with port", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "[2001:db8::7]:443"}, []string{"198.51.100.1"}, "2001:db8::7", nil},
		{"IPv6 proxy", server{"REMOTE_ADDR": "2001:db8:1::5", "HTTP_X_FORWARDED_FOR": "192.0.2.7"}, []string{"2001:db8:1::/48"}, "192.0.2.7", nil},
		{"IPv4 network does not match IPv6", server{"REMOTE_ADDR": "::a00:1", "HTTP_X_FORWARDED_FOR": "192.0.2.7"}, []string{"10.0.0.0/8"}, "::10.0.0.1", nil}, // PHP writes IPv4-compatible IPv6 so
		{"zone index is not an address", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "fe80::1%eth0"}, []string{"198.51.100.1"}, "198.51.100.1", nil},
		{"bad proxy entries left out", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "192.0.2.7"},
			[]string{"proxy.example", "10.0.0.0/33", "10.0.0.0/x", "2001:db8::/129", "198.51.100.1", "1.2.3.4:80"}, "192.0.2.7",
			[]string{"proxy.example", "10.0.0.0/33", "10.0.0.0/x", "2001:db8::/129", "1.2.3.4:80"}},
		{"only bad proxy entries", server{"REMOTE_ADDR": "198.51.100.1", "HTTP_X_FORWARDED_FOR": "192.0.2.7"}, []string{"/8"}, "198.51.100.1", []string{"/8"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := json.Marshal([]any{map[string]any{"server": tc.server, "proxies": append([]string{}, tc.proxies...)}})
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(php, "-n", "testdata/client_ip.php", "mailguard_client_ip/mailguard_client_ip.php")
			cmd.Dir = "roundcube"
			cmd.Stdin = bytes.NewReader(in)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("php: %v\n%s%s", err, out, stderr.Bytes())
			}
			var got []struct {
				IP  *string  `json:"ip"`
				Bad []string `json:"bad"`
			}
			if err := json.Unmarshal(out, &got); err != nil || len(got) != 1 {
				t.Fatalf("php output %q: %v", out, err)
			}
			ip := ""
			if got[0].IP != nil {
				ip = *got[0].IP
			}
			if ip != tc.want || !slices.Equal(got[0].Bad, tc.bad) {
				t.Errorf("client_ip(%v, %q) = %q (left out %q), want %q (left out %q)", tc.server, tc.proxies, ip, got[0].Bad, tc.want, tc.bad)
			}
		})
	}
}
