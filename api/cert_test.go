package api

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writePair writes a self-signed certificate for cn and its key as PEM,
// with the files' mtime set to at.
func writePair(t *testing.T, certFile, keyFile, cn string, at time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for f, b := range map[string][]byte{
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(f, at, at)
	}
}

func cn(t *testing.T, c *Certificate) string {
	t.Helper()
	tc, err := c.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	x, err := x509.ParseCertificate(tc.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return x.Subject.CommonName
}

// A renewed pair is served after at most a minute; a broken renewal keeps
// the previous certificate; a pair that does not load stops the start.
func TestCertificateReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	t0 := time.Now().Add(-time.Hour)
	writePair(t, certFile, keyFile, "first", t0)
	clk := t0
	c, err := LoadCertificate(certFile, keyFile, nil, func() time.Time { return clk })
	if err != nil {
		t.Fatal(err)
	}
	writePair(t, certFile, keyFile, "renewed", t0.Add(time.Minute))
	if got := cn(t, c); got != "first" {
		t.Errorf("within the minute: %s, want first", got)
	}
	clk = clk.Add(certRecheck)
	if got := cn(t, c); got != "renewed" {
		t.Errorf("a minute later: %s, want renewed", got)
	}
	os.WriteFile(keyFile, []byte("half-written"), 0o600)
	clk = clk.Add(certRecheck)
	if got := cn(t, c); got != "renewed" {
		t.Errorf("after a broken renewal: %s, want the previous one kept", got)
	}
	if _, err := LoadCertificate(certFile, keyFile, nil, nil); err == nil {
		t.Errorf("LoadCertificate(broken key) = nil error")
	}
	if _, err := LoadCertificate(certFile+".none", keyFile, nil, nil); err == nil {
		t.Errorf("LoadCertificate(missing) = nil error")
	}
}
