package totp

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KeySize is the length of the AES-256 key that seals the secrets.
const KeySize = 32

// sealVersion starts every sealed secret: the format below.
const sealVersion = 1

// ErrKey is wrapped by every error about the key file or a secret it cannot
// open: a missing, unreadable, malformed or wrong key is a start error,
// never a silent disable.
var ErrKey = errors.New("totp key")

// sealer seals secrets with AES-256-GCM: version byte, 12-byte random nonce,
// ciphertext and tag. The user is the additional data, so a sealed secret
// moved to another user's record does not open.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrKey, len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	return &sealer{aead}, nil
}

func (s *sealer) seal(user string, secret []byte) []byte {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(secret)+s.aead.Overhead())
	out[0] = sealVersion
	rand.Read(out[1:])
	return s.aead.Seal(out, out[1:], secret, []byte(user))
}

// open returns the secret sealed for user. The error never holds the
// secret: a wrong key and a tampered record look alike.
func (s *sealer) open(user string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n+s.aead.Overhead() || sealed[0] != sealVersion {
		return nil, fmt.Errorf("%w: sealed secret of %q is malformed", ErrKey, user)
	}
	out, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], []byte(user))
	if err != nil {
		return nil, fmt.Errorf("%w: the secret of %q does not open with this key (a different key_file, or the record was altered)", ErrKey, user)
	}
	return out, nil
}

// LoadKey reads the key file: KeySize bytes in hex on one line. With create
// set and no file at path, it makes one (mode 0600, its directory 0700)
// holding a new random key. A file readable by group or others is refused.
func LoadKey(path string, create bool) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		return createKey(path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: key_file %s does not exist", ErrKey, path)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: key_file: %v", ErrKey, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: key_file: %v", ErrKey, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: key_file %s is readable by others (mode %04o): chmod 600 it", ErrKey, path, st.Mode().Perm())
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != KeySize {
		return nil, fmt.Errorf("%w: key_file %s must hold %d bytes in hex (64 digits) on one line", ErrKey, path, KeySize)
	}
	return key, nil
}

func createKey(path string) ([]byte, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("%w: key_file: %v", ErrKey, err)
	}
	key := make([]byte, KeySize)
	rand.Read(key)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: creating key_file: %v", ErrKey, err)
	}
	_, err = f.WriteString(hex.EncodeToString(key) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("%w: writing key_file: %v", ErrKey, err)
	}
	return key, nil
}
