package config

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultsValid(t *testing.T) {
	c, err := Load("testdata/none-such.yaml", nil)
	if err == nil {
		t.Fatalf("Load(missing file) = nil error")
	}
	c, err = Load("", nil)
	if err != nil {
		t.Fatalf("Load(defaults) = %v", err)
	}
	if got, want := c.Jails["dovecot"].MaxRetry, 5; got != want {
		t.Errorf("dovecot maxretry = %d, want %d", got, want)
	}
	if got, want := c.Postfix.Listen, "127.0.0.1:10028"; got != want {
		t.Errorf("postfix.listen = %q, want %q", got, want)
	}
}

func TestGoodFile(t *testing.T) {
	c, err := Load("testdata/good.yaml", nil)
	if err != nil {
		t.Fatalf("Load(good.yaml) = %v", err)
	}
	if got, want := c.Jails["dovecot"].FindTime.D(), 10*time.Minute; got != want {
		t.Errorf("findtime 600 = %v, want %v", got, want)
	}
	if got, want := c.Jails["dovecot"].BanTime.D(), 168*time.Hour; got != want {
		t.Errorf("bantime 168h = %v, want %v", got, want)
	}
	// A file that sets one field of a default jail keeps the others.
	if got, want := c.Jails["dovecot"].MaxRetry, 5; got != want {
		t.Errorf("dovecot maxretry = %d, want %d (default kept)", got, want)
	}
	if got := c.Jails["imap-only"].Protocols; len(got) != 1 || got[0] != "imap" {
		t.Errorf("imap-only protocols = %v", got)
	}
}

func TestBadFiles(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"bad-maxretry.yaml", "jails.dovecot.maxretry: must be at least 1, not 0"},
		{"bad-unknown-key.yaml", "store.backnd: unknown key"},
		{"bad-duration.yaml", `jails.dovecot.bantime: invalid duration "10x"`},
		{"bad-cidr.yaml", `ignoreip: "10.0.0.0/33" is not an address or CIDR`},
		{"bad-failmode.yaml", `store.fail_mode: must be open or closed, not "maybe"`},
		{"bad-yaml.yaml", "bad-yaml.yaml"},
	} {
		_, err := Load("testdata/"+tc.file, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%s) = %v, want error containing %q", tc.file, err, tc.want)
		}
	}
}

func TestEnvAndSet(t *testing.T) {
	t.Setenv("MAILGUARD_STORE_FAIL_MODE", "closed")
	t.Setenv("MAILGUARD_JAILS_DOVECOT_USER_MAXRETRY", "7")
	t.Setenv("MAILGUARD_IGNOREIP", "10.0.0.0/8, 192.0.2.1")
	c, err := Load("", []string{"jails.dovecot.bantime=7200", "postfix.listen=unix:/tmp/p.sock"})
	if err != nil {
		t.Fatalf("Load = %v", err)
	}
	if c.Store.FailMode != "closed" {
		t.Errorf("store.fail_mode = %q, want closed (from env)", c.Store.FailMode)
	}
	if got := c.Jails["dovecot-user"].MaxRetry; got != 7 {
		t.Errorf("dovecot-user maxretry = %d, want 7 (from env)", got)
	}
	if got := c.IgnoreIP; len(got) != 2 || got[1] != "192.0.2.1" {
		t.Errorf("ignoreip = %q, want 2 entries from env", got)
	}
	if got := c.Jails["dovecot"].BanTime.D(); got != 2*time.Hour {
		t.Errorf("bantime = %v, want 2h (from --set)", got)
	}
	if _, err := Load("", []string{"jails.dovecot.maxretry=0"}); err == nil || !strings.Contains(err.Error(), "jails.dovecot.maxretry") {
		t.Errorf("--set maxretry=0: err = %v", err)
	}
	if _, err := Load("", []string{"novalue"}); err == nil {
		t.Errorf("--set novalue: no error")
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"10m", 10 * time.Minute, true}, {"600", 10 * time.Minute, true}, {"168h", 168 * time.Hour, true},
		{"0", 0, true}, {"-5", 0, false}, {"ten", 0, false}, {"1.5", 0, false},
	} {
		got, err := ParseDuration(tc.in)
		if (err == nil) != tc.ok || got.D() != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// The example in contrib documents every key with its default: loading it
// must give exactly the built-in defaults (paths aside).
func TestExampleIsDefaults(t *testing.T) {
	ex, err := Load("../../contrib/mailguard.example.yaml", nil)
	if err != nil {
		t.Fatalf("contrib/mailguard.example.yaml: %v", err)
	}
	def, _ := Load("", nil)
	ex.StateDir, ex.Admin.Socket = def.StateDir, def.Admin.Socket
	if got, want := fmt.Sprintf("%+v", ex), fmt.Sprintf("%+v", def); got != want {
		t.Errorf("example differs from defaults:\nexample  %s\ndefaults %s", got, want)
	}
	for _, k := range knownKeys(reflect.TypeOf(Config{}), "") {
		k = strings.ReplaceAll(k, "*.", "dovecot.")
		leaf := k[strings.LastIndex(k, ".")+1:]
		if b, _ := os.ReadFile("../../contrib/mailguard.example.yaml"); !strings.Contains(string(b), leaf+":") {
			t.Errorf("example does not document %s", k)
		}
	}
}
