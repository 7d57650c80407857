package api

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certRecheck is how often a Certificate looks at its files again.
const certRecheck = time.Minute

// Certificate serves a certificate and key from PEM files, loaded again when
// either file changes (a renewal by certbot or an ACME client), looked at
// no more than once a minute. A renewal that does not load is logged and
// the previous certificate kept.
type Certificate struct {
	certFile, keyFile string
	log               *slog.Logger
	now               func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // the files' sizes and mtimes at the last load
	checked time.Time
}

// LoadCertificate loads the pair once (an error stops the start); log
// (nil: slog.Default()) gets reloads and failed reloads, now (nil:
// time.Now) is the clock of the minute between looks.
func LoadCertificate(certFile, keyFile string, log *slog.Logger, now func() time.Time) (*Certificate, error) {
	if log == nil {
		log = slog.Default()
	}
	if now == nil {
		now = time.Now
	}
	c := &Certificate{certFile: certFile, keyFile: keyFile, log: log, now: now}
	stamp, err := c.stampNow()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("api: certificate: %w", err)
	}
	c.cert, c.stamp, c.checked = &cert, stamp, now()
	return c, nil
}

func (c *Certificate) stampNow() (string, error) {
	var s string
	for _, f := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("api: certificate: %w", err)
		}
		s += fmt.Sprintf("%d/%d ", fi.Size(), fi.ModTime().UnixNano())
	}
	return s, nil
}

// GetCertificate is tls.Config.GetCertificate.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); now.Sub(c.checked) >= certRecheck {
		c.checked = now
		if stamp, err := c.stampNow(); err == nil && stamp != c.stamp {
			if cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile); err != nil {
				c.log.Warn("api: renewed certificate does not load, keeping the previous one", "cert", c.certFile, "err", err)
			} else {
				c.cert, c.stamp = &cert, stamp
				c.log.Info("api: certificate reloaded", "cert", c.certFile)
			}
		}
	}
	return c.cert, nil
}

// TLSConfig returns a server configuration serving c (TLS 1.2 or later).
func (c *Certificate) TLSConfig() *tls.Config {
	return &tls.Config{GetCertificate: c.GetCertificate, MinVersion: tls.VersionTLS12}
}
