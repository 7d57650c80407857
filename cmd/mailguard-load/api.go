package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
)

// apiLoad drives mailguard's GET /v1/check as nginx's auth_request does:
// one keep-alive connection per worker, the client address in ?ip=, the
// bearer token in the -api-header line. Answers are labelled by status:
// 204 allowed, 403 refused (200 from the floor, which answers any path).
type apiLoad struct {
	network, addr string
	url           string // http://HOST/v1/check?ip=
	header        string
	headerValue   string
	clients       []string
	dials         atomic.Int64
}

// parseAPIURL checks -api: http://HOST:PORT/ on a loopback address.
func parseAPIURL(ctx context.Context, raw string) (network, addr string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("-api: %w", err)
	}
	if u.Scheme != "http" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return "", "", fmt.Errorf("-api %q: want http://HOST:PORT/ (no https, user, path, query or fragment)", raw)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	return loopbackTarget(ctx, "-api", net.JoinHostPort(u.Hostname(), port))
}

func newAPILoad(network, addr, apiHeader string, clients int) *apiLoad {
	a := &apiLoad{network: network, addr: addr, url: "http://" + addr + "/v1/check?ip=", clients: testAddrs(clients)}
	a.header, a.headerValue = apiHeaderLine(apiHeader)
	return a
}

func (a *apiLoad) open(ctx context.Context, w int) (session, error) {
	dialer := &net.Dialer{Timeout: ioTimeout}
	tr := &http.Transport{
		Proxy: nil, // the target is checked to be local
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			a.dials.Add(1)
			return dialer.DialContext(ctx, a.network, a.addr)
		},
		MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true,
	}
	return &apiSession{a: a, c: &http.Client{Transport: tr, Timeout: ioTimeout}, tr: tr}, nil
}

type apiSession struct {
	a  *apiLoad
	c  *http.Client
	tr *http.Transport
}

func (s *apiSession) do(ctx context.Context, i int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.a.url+s.a.clients[i%len(s.a.clients)], nil)
	if err != nil {
		return "", err
	}
	if s.a.header != "" {
		req.Header.Set(s.a.header, s.a.headerValue)
	}
	resp, err := s.c.Do(req)
	if err != nil {
		return "", err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNoContent, http.StatusForbidden:
		return strconv.Itoa(resp.StatusCode), nil
	}
	return "", fmt.Errorf("check: HTTP %s: %.200s", resp.Status, body)
}

func (s *apiSession) Close() error {
	s.tr.CloseIdleConnections()
	return nil
}
