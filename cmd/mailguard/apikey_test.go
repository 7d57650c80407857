package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/mailguard/mailguard/internal/config"
)

func keyConfig(t *testing.T) config.Config {
	c := config.Defaults()
	c.StateDir = filepath.Join(t.TempDir(), "state")
	return c
}

func TestDovecotAPIHeaderCreatesOneKey(t *testing.T) {
	c := keyConfig(t)
	if _, err := dovecotAPIHeader(c, false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("dovecotAPIHeader(create=false) without a key = %v, want fs.ErrNotExist", err)
	}
	// Concurrent first starts agree on one key.
	var wg sync.WaitGroup
	got := make([]string, 8)
	errs := make([]error, 8)
	for i := range got {
		wg.Go(func() { got[i], errs[i] = dovecotAPIHeader(c, true) })
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil {
			t.Fatalf("dovecotAPIHeader: %v", errs[i])
		}
		if got[i] != got[0] {
			t.Fatalf("concurrent creators got different keys: %q and %q", got[0], got[i])
		}
	}
	key, ok := strings.CutPrefix(got[0], "Authorization: Bearer ")
	if !ok || len(key) != 64 {
		t.Fatalf("header = %q, want Authorization: Bearer and 64 hex digits", got[0])
	}
	fi, err := os.Stat(dovecotKeyPath(c))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v; want 0600", err, fi.Mode())
	}
	ents, _ := os.ReadDir(c.StateDir)
	if len(ents) != 1 {
		t.Errorf("state_dir holds %d files, want only the key (temporary files removed)", len(ents))
	}
	again, err := dovecotAPIHeader(c, true)
	if err != nil || again != got[0] {
		t.Errorf("second call = %q, %v; want the same key", again, err)
	}
}

func TestDovecotAPIHeaderSources(t *testing.T) {
	c := keyConfig(t)
	c.Dovecot.APIHeader = "X-API-Key: set-by-admin"
	if h, err := dovecotAPIHeader(c, true); err != nil || h != "X-API-Key: set-by-admin" {
		t.Errorf("with api_header set = %q, %v; want it verbatim", h, err)
	}
	if _, err := os.Stat(dovecotKeyPath(c)); err == nil {
		t.Errorf("a key file was made although api_header is set")
	}
	c.Dovecot.APIHeader = ""
	c.Dovecot.InsecureNoAuth = true
	if h, err := dovecotAPIHeader(c, true); err != nil || h != "" {
		t.Errorf("with insecure_no_auth = %q, %v; want no header", h, err)
	}
}

func TestDovecotAPIHeaderBadKeyFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		mode    fs.FileMode
		want    string
	}{
		{"readable by others", "0123456789abcdef0123", 0o644, "chmod 600"},
		{"too short", "k3y9", 0o600, "at least 16 characters"},
		{"two words", "0123456789abcdef 0123456789abcdef", 0o600, "one word"},
		{"control character", "0123456789abcdef\x1b[2J", 0o600, "one word"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := keyConfig(t)
			os.MkdirAll(c.StateDir, 0o700)
			if err := os.WriteFile(dovecotKeyPath(c), []byte(tc.content), tc.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(dovecotKeyPath(c), tc.mode)
			h, err := dovecotAPIHeader(c, true)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("dovecotAPIHeader = %q, %v; want an error containing %q", h, err, tc.want)
			}
			if strings.Contains(err.Error(), tc.content) {
				t.Errorf("error %q shows the key", err)
			}
		})
	}
	// A key the admin wrote is used as it is.
	c := keyConfig(t)
	os.MkdirAll(c.StateDir, 0o700)
	os.WriteFile(dovecotKeyPath(c), []byte("  my-own-key-0123456789\n"), 0o600)
	if h, err := dovecotAPIHeader(c, false); err != nil || h != "Authorization: Bearer my-own-key-0123456789" {
		t.Errorf("admin's key = %q, %v", h, err)
	}
}
