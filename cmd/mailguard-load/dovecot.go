package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
)

// dovecotLoad speaks Dovecot 2.3's auth policy HTTP API the way
// dovecot/auth-policy-client does: POST {url}?command=allow|report with a JSON
// body of the default auth_policy_request_attributes (keys and order as
// recorded in authhook/testdata), Content-Type application/json, its
// User-Agent, the api header line verbatim, one keep-alive connection per
// worker.
//
// Requests come in login attempts of two requests each, so that every
// attempt is closed the way Dovecot closes it and authhook's table of open
// attempts stays small:
//
//   - a failed attempt is allow, then report with success=false (with
//     policy_reject=true when the allow was refused, as Dovecot sends it);
//   - a successful attempt is the before-auth allow, then the after-auth
//     allow of the same body. Its success report is left out, so that the
//     mix is the one of issue 4: with failRatio r, a fraction r of the
//     requests are failed reports and 1−r are allows (2r of the attempts
//     fail, so r is at most 0.5).
//
// Failed attempts come from attackers, the first ceil(K/16) of the K client
// addresses, guessing a new password (pwhash) of a login taken round-robin
// from the users; the other clients only log in successfully, each as its own
// user with its own password. So with the default jails each attacker is
// banned after a few failures (then refused, tarpitted just before), while
// most clients and users are never refused. Three attempts in four are IMAP
// with a Dovecot session id, one in four SMTP AUTH (empty session_id, as
// Postfix SASL sends).
type dovecotLoad struct {
	network, addr string
	url           string // without the query
	header        string // http.CanonicalHeaderKey name, "" for none
	headerValue   string
	failEvery     float64 // fraction of attempts that fail: 2 × failRatio
	attackers     []string
	legit         []string
	users         []string
	dials         atomic.Int64
}

// newDovecotLoad takes the target as checked by loopbackTarget, the URL's
// path, and the api header as Dovecot's auth_policy_server_api_header.
func newDovecotLoad(network, addr, path, apiHeader string, failRatio float64, clients, users int) *dovecotLoad {
	if path == "" {
		path = "/"
	}
	host := addr
	if network == "unix" {
		host = "localhost"
	}
	d := &dovecotLoad{network: network, addr: addr, url: "http://" + host + path, failEvery: 2 * failRatio}
	d.header, d.headerValue = apiHeaderLine(apiHeader)
	all := testAddrs(clients)
	n := (len(all) + 15) / 16
	d.attackers, d.legit = all[:n], all[n:]
	if len(d.legit) == 0 {
		d.legit = all
	}
	for i := range users {
		d.users = append(d.users, fmt.Sprintf("user%d@example.org", i))
	}
	return d
}

// apiHeaderLine splits auth_policy_server_api_header as Dovecot 2.3 does:
// "Name: value", or a bare value sent as X-API-Key.
func apiHeaderLine(h string) (name, value string) {
	h = strings.TrimSpace(h)
	if h == "" {
		return "", ""
	}
	name, value, ok := strings.Cut(h, ":")
	if !ok {
		return "X-Api-Key", h
	}
	return http.CanonicalHeaderKey(strings.TrimSpace(name)), strings.TrimSpace(value)
}

// parseDovecotURL checks -dovecot: http://HOST:PORT/path with a loopback
// HOST (or localhost), or unix:/path. It returns what to dial and the path.
func parseDovecotURL(ctx context.Context, raw string) (network, addr, path string, err error) {
	if strings.HasPrefix(raw, "unix:") {
		network, addr, err = loopbackTarget(ctx, "-dovecot", raw)
		return network, addr, "/", err
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", "", fmt.Errorf("-dovecot: %w", err)
	}
	if u.Scheme != "http" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", "", "", fmt.Errorf("-dovecot %q: want http://HOST:PORT/ (no https, user, query or fragment) or unix:/path", raw)
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	network, addr, err = loopbackTarget(ctx, "-dovecot", net.JoinHostPort(u.Hostname(), port))
	return network, addr, u.EscapedPath(), err
}

func (d *dovecotLoad) open(ctx context.Context, w int) (session, error) {
	dialer := &net.Dialer{Timeout: ioTimeout}
	tr := &http.Transport{
		Proxy: nil, // never HTTP_PROXY: the target is checked to be local
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d.dials.Add(1)
			return dialer.DialContext(ctx, d.network, d.addr)
		},
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true, // Dovecot sends no Accept-Encoding
	}
	return &dovecotSession{d: d, w: w, c: &http.Client{Transport: tr, Timeout: ioTimeout}, tr: tr}, nil
}

type dovecotSession struct {
	d        *dovecotLoad
	w        int
	c        *http.Client
	tr       *http.Transport
	attempts int
	// The attempt in progress: its body is sent twice (allow then report or
	// after-auth allow).
	pending  bool
	failing  bool
	refused  bool
	remote   string
	login    string
	pwhash   string
	protocol string
	sid      string
	body     []byte
}

// do sends the first or the second request of a login attempt; label is the
// verdict read from the JSON status: allow, tarpit or refuse for allow,
// report for report.
func (s *dovecotSession) do(ctx context.Context, i int) (string, error) {
	if !s.pending {
		s.start(i)
		label, err := s.post(ctx, "allow", false)
		if err != nil {
			return "", err
		}
		s.pending, s.refused = true, label == "refuse"
		return label, nil
	}
	s.pending = false
	if s.failing {
		return s.post(ctx, "report", true)
	}
	return s.post(ctx, "allow", false)
}

// start picks attempt number k of this session: failing ones are spread
// evenly (the k-th fails when ⌊(k+1)f⌋ > ⌊kf⌋), i picks the client and user.
func (s *dovecotSession) start(i int) {
	k := s.attempts
	s.attempts++
	f := s.d.failEvery
	s.failing = int(float64(k+1)*f) > int(float64(k)*f)
	if s.failing {
		s.remote = s.d.attackers[i%len(s.d.attackers)]
		s.login = s.d.users[i%len(s.d.users)]
		s.pwhash = fmt.Sprintf("%04x", (i*2654435761)&0xfff) // a new guess each time
	} else {
		c := i % len(s.d.legit)
		s.remote = s.d.legit[c]
		s.login = s.d.users[c%len(s.d.users)]
		s.pwhash = fmt.Sprintf("%04x", (c*40503)&0xfff) // the user's own password
	}
	s.protocol, s.sid = "imap", fmt.Sprintf("load%04x%08x", s.w&0xffff, uint32(k))
	if k%4 == 3 {
		s.protocol, s.sid = "smtp", ""
	}
}

// post sends the attempt's body. Keys are Dovecot's: sorted attributes, then
// for a report success and policy_reject, then tls, every attribute a string.
func (s *dovecotSession) post(ctx context.Context, cmd string, report bool) (string, error) {
	b := s.body[:0]
	b = append(b, `{"device_id":"","login":`...)
	b = strconv.AppendQuote(b, s.login)
	b = append(b, `,"protocol":`...)
	b = strconv.AppendQuote(b, s.protocol)
	b = append(b, `,"pwhash":`...)
	b = strconv.AppendQuote(b, s.pwhash)
	b = append(b, `,"remote":`...)
	b = strconv.AppendQuote(b, s.remote)
	b = append(b, `,"session_id":`...)
	b = strconv.AppendQuote(b, s.sid)
	if report {
		b = append(b, `,"success":false,"policy_reject":`...)
		b = strconv.AppendBool(b, s.refused)
	}
	b = append(b, `,"tls":false}`...)
	s.body = b

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.d.url+"?command="+cmd, strings.NewReader(string(b)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "dovecot/auth-policy-client")
	if s.d.header != "" {
		req.Header.Set(s.d.header, s.d.headerValue)
	}
	resp, err := s.c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", err
	}
	io.Copy(io.Discard, resp.Body) // read to the end: the connection is reused
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: HTTP %s: %s", cmd, resp.Status, strings.TrimSpace(string(body)))
	}
	var r struct {
		Status *int `json:"status"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return "", fmt.Errorf("%s: answer %q: %w", cmd, body, err)
	}
	if r.Status == nil {
		return "", fmt.Errorf("%s: answer %q: %w", cmd, body, errNoStatus)
	}
	switch st := *r.Status; {
	case report && st == 0:
		return "report", nil
	case report:
		return "report-status-" + strconv.Itoa(st), nil
	case st < 0:
		return "refuse", nil
	case st > 0:
		return "tarpit", nil
	}
	return "allow", nil
}

var errNoStatus = errors.New("no integer status")

func (s *dovecotSession) Close() error {
	s.tr.CloseIdleConnections()
	return nil
}
