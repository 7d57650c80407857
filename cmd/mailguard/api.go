package main

import (
	"fmt"
	"log/slog"

	"github.com/mailguard/mailguard/api"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/metrics"
)

// apiServer builds the HTTP API (api.*) over g, or returns nil when
// api.tokens_file is not set: without tokens every request would be 401,
// so the port stays closed. A tokens file others may read, or a TLS key
// pair that does not load, stops the start.
func apiServer(c config.Config, g *guard.Guard, reg *metrics.Registry, log *slog.Logger) (*api.Server, error) {
	if c.API.TokensFile == "" {
		log.Info("api off: set api.tokens_file to serve the HTTP API (nginx auth_request, web app reports)")
		return nil, nil
	}
	toks, err := api.LoadTokens(c.API.TokensFile)
	if err != nil {
		return nil, &exitError{exitUsage, fmt.Errorf("api.tokens_file: %w", err)}
	}
	s := &api.Server{
		Guard: g, Tokens: toks, FailOpen: c.Store.FailMode == "open", Timeout: c.Store.Timeout.D(),
		MaxConns: c.API.MaxConns, Log: log.With("frontend", "api"), Metrics: metrics.Frontend{R: reg, Name: "api"},
	}
	if c.API.TLSCert != "" {
		cert, err := api.LoadCertificate(c.API.TLSCert, c.API.TLSKey, s.Log, nil)
		if err != nil {
			return nil, &exitError{exitUsage, fmt.Errorf("api.tls_cert, api.tls_key: %w", err)}
		}
		s.TLS = cert.TLSConfig()
	}
	return s, nil
}
