package redisstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// TestTLS opens the store with a rediss:// URL on a TLS-only port, trusting
// a private CA.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mailguard test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsPort := testenv.FreePort(t)
	redistest.StartServer(t, redistest.Config{Args: []string{
		"--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile, "--tls-key-file", keyFile,
		"--tls-ca-cert-file", certFile, "--tls-auth-clients", "no",
	}})
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	url := "rediss://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))

	s := open(t, redisstore.Options{URL: url, TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, Prefix: freshPrefix(t)})
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping over TLS: %v", err)
	}
	// Generous timeouts: on a loaded machine a 500ms dial timeout can expire
	// before the handshake fails, and an unreachable Redis does not fail Open.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	slow := redisstore.Options{URL: url, DialTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	if s, err := redisstore.Open(ctx, slow); err == nil {
		s.Close()
		t.Errorf("Open trusting only the system roots succeeded")
	}
}
