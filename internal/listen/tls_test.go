package listen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"
)

// Served over TLS, the cap tracks the connections under the *tls.Conn that
// http.Server reports: closed ones leave its table, idle ones are evicted.
func TestHTTPServesTLSCapped(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := Cap(l, 2)
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
	}
	var h HTTP
	done := make(chan error, 1)
	go func() { done <- h.Serve(srv, cl) }()
	defer func() { h.Close(); <-done }()

	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	for i := range 5 { // more connections than the cap, one after another
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := c.Get("https://" + l.Addr().String() + "/")
		if err != nil {
			t.Fatalf("request %d over TLS: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
	}
	deadline := time.Now().Add(10 * time.Second)
	for cl.Len() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the server notices the closes on its own goroutines
	}
	if n := cl.Len(); n != 0 {
		t.Errorf("cap holds %d closed TLS connections, want 0", n)
	}
}
