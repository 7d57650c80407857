package testcert

import (
	"crypto/tls"
	"crypto/x509"
	"io/fs"
	"os"
	"testing"
)

// A certificate of New verifies against its pool for each name and
// loopback address; Write's files load as a key pair, the key unreadable
// by others.
func TestCertificates(t *testing.T) {
	c, pool := New(t, "mx.example.org")
	for _, host := range []string{"mx.example.org", "127.0.0.1", "::1"} {
		if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: pool}); err != nil {
			t.Errorf("Verify(%s) = %v", host, err)
		}
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: pool}); err == nil {
		t.Errorf("Verify(localhost) of a certificate for mx.example.org succeeded")
	}

	certFile, keyFile := Write(t, t.TempDir())
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatalf("LoadX509KeyPair = %v", err)
	}
	for f, want := range map[string]fs.FileMode{certFile: 0o644, keyFile: 0o600} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", f, fi.Mode().Perm(), want)
		}
	}
	c1, _ := New(t)
	c2, _ := New(t)
	if c1.Leaf.SerialNumber.Cmp(c2.Leaf.SerialNumber) == 0 {
		t.Errorf("two certificates share the serial %v", c1.Leaf.SerialNumber)
	}
}
