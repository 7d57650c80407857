package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/mailguard/mailguard/internal/config"
)

// dovecotKeyFile is the file in state_dir that holds the key Dovecot must
// send when dovecot.api_header is not set.
const dovecotKeyFile = "dovecot-api.key"

// dovecotKeyPath returns where the generated Dovecot API key lives.
func dovecotKeyPath(c config.Config) string {
	return filepath.Join(c.StateDir, dovecotKeyFile)
}

// dovecotAPIHeader returns the header line Dovecot's auth policy requests
// must carry ("Name: value", as Dovecot's auth_policy_server_api_header):
//
//   - dovecot.api_header when it is set;
//   - "" (no check) when dovecot.insecure_no_auth is true;
//   - otherwise "Authorization: Bearer KEY", KEY being the content of
//     state_dir/dovecot-api.key. When the file is missing and create is true,
//     a random key is written there first (mode 0600, atomically: a
//     concurrent creator's key wins and is returned); when create is false
//     the error wraps fs.ErrNotExist.
//
// The key is a secret: callers never log the result.
func dovecotAPIHeader(c config.Config, create bool) (string, error) {
	if h := strings.TrimSpace(c.Dovecot.APIHeader); h != "" {
		return h, nil
	}
	if c.Dovecot.InsecureNoAuth {
		return "", nil
	}
	path := dovecotKeyPath(c)
	key, err := readDovecotKey(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		if err = createDovecotKey(path); err == nil {
			key, err = readDovecotKey(path)
		}
	}
	if err != nil {
		return "", err
	}
	return "Authorization: Bearer " + key, nil
}

// readDovecotKey reads and checks a key file: one token of printable ASCII,
// readable by its owner alone.
func readDovecotKey(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("dovecot API key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("dovecot API key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("dovecot API key %s: not a regular file", path)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return "", fmt.Errorf("dovecot API key %s: mode %04o lets other users read it: chmod 600 %s", path, m, path)
	}
	b := make([]byte, 1025)
	n, _ := f.Read(b)
	if n > 1024 {
		return "", fmt.Errorf("dovecot API key %s: longer than 1024 bytes", path)
	}
	key := strings.TrimSpace(string(b[:n]))
	if len(key) < 16 {
		return "", fmt.Errorf("dovecot API key %s: want a key of at least 16 characters (remove the file to have a new one made)", path)
	}
	for _, r := range key {
		if r <= ' ' || r > '~' {
			return "", fmt.Errorf("dovecot API key %s: want one word of printable ASCII (remove the file to have a new one made)", path)
		}
	}
	return key, nil
}

// createDovecotKey writes 32 random bytes, hex-encoded, to path unless it
// exists: a temporary file is written and synced, then hard-linked to path,
// which fails rather than replaces when another process got there first.
func createDovecotKey(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dovecot API key: state_dir: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("dovecot API key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, dovecotKeyFile+".tmp*") // mode 0600
	if err != nil {
		return fmt.Errorf("dovecot API key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(hex.EncodeToString(raw[:]) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("dovecot API key: write %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("dovecot API key: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
