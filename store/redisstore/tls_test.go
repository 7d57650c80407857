package redisstore_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/testcert"
	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/store/redisstore"
	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// TestTLS opens the store with a rediss:// URL on a TLS-only port, trusting
// the test's self-signed certificate.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := testcert.Write(t, dir)
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
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
