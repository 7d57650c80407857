package main

import (
	"fmt"
	"log/slog"
	"net/url"

	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/totp"
	"github.com/mailguard/mailguard/totp/web"
)

// totpWeb returns the approval and enrolment pages (package totp/web) that
// serve runs on totp.listen: behind the proxies of totp.trusted_proxies,
// under totp.url's path, approving for totp.trust_ttl.
func totpWeb(svc *totp.Service, c config.Config, log *slog.Logger) (*web.Server, error) {
	proxies, err := config.ParseIgnore(c.TOTP.TrustedProxies) // validated
	if err != nil {
		return nil, fmt.Errorf("totp.trusted_proxies: %w", err)
	}
	u, err := url.Parse(c.TOTP.URL) // validated
	if err != nil {
		return nil, fmt.Errorf("totp.url: %w", err)
	}
	return &web.Server{
		Service: svc, TrustedProxies: proxies, TrustTTL: c.TOTP.TrustTTL.D(), BasePath: u.Path,
		Log: log.With("frontend", "totp"),
	}, nil
}
