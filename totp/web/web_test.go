package web

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/mailguard/mailguard/internal/dedup"
	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/internal/logtest"
)

// site is a Server over the real totp.Service on a real listener, with a browser-
// like client (cookie jar, no redirects followed automatically).
type site struct {
	t     *testing.T
	clk   *fakeclock.Clock
	svc   *service
	srv   *Server
	hs    *httptest.Server
	jar   http.CookieJar
	hc    *http.Client
	proxy http.Header // headers every request carries (a proxy's)
}

func newSite(t *testing.T, configure func(*Server)) *site {
	t.Helper()
	clk := fakeclock.New(time.Date(2026, 11, 29, 10, 0, 5, 0, time.UTC))
	svc := newService(t, clk.Now)
	srv := &Server{Service: svc, TrustTTL: 30 * 24 * time.Hour, Log: slog.New(slog.DiscardHandler), now: clk.Now}
	if configure != nil {
		configure(srv)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &site{t: t, clk: clk, svc: svc, srv: srv, hs: hs, jar: jar, hc: hc, proxy: http.Header{}}
}

type response struct {
	status int
	header http.Header
	body   string
}

func (s *site) do(method, path string, form url.Values) response {
	s.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, s.hs.URL+path, body)
	if err != nil {
		s.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range s.proxy {
		req.Header[k] = v
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(b)}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no csrf token in page:\n%s", body)
	}
	return m[1]
}

func (s *site) code(secret string) string {
	c, err := totp.GenerateCode(secret, s.clk.Now())
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// signIn signs user in with a current code.
func (s *site) signIn(user, secret string) response {
	s.t.Helper()
	home := s.do("GET", "/", nil)
	r := s.do("POST", "/login", url.Values{"csrf": {csrfOf(s.t, home.body)}, "login": {user}, "code": {s.code(secret)}})
	if r.status != http.StatusSeeOther {
		s.t.Fatalf("sign in %s: status %d, want 303:\n%s", user, r.status, r.body)
	}
	return s.do("GET", "/", nil)
}

func TestSecurityHeaders(t *testing.T) {
	s := newSite(t, func(srv *Server) { srv.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")} })
	tok := s.svc.link(t, "alice")
	want := map[string]string{
		"X-Frame-Options":        "DENY",
		"Referrer-Policy":        "no-referrer",
		"X-Content-Type-Options": "nosniff",
		"Cache-Control":          "no-store",
	}
	for _, tc := range []struct {
		name, method, path string
		proto              string // X-Forwarded-Proto from the (trusted) proxy
		status             int
	}{
		{"login page", "GET", "/", "http", 200},
		{"login page over https", "GET", "/", "https", 200},
		{"no such page", "GET", "/admin", "https", 404},
		{"wrong method", "DELETE", "/", "https", 405},
		{"enrolment", "GET", "/enrol/" + tok, "https", 200},
		{"qr code", "GET", "/enrol/" + tok + "/qr.png", "https", 200},
		{"bad link", "GET", "/enrol/nope", "https", 404},
		{"form without token", "POST", "/login", "https", 403},
	} {
		s.proxy = http.Header{"X-Forwarded-For": {"203.0.113.5"}, "X-Forwarded-Proto": {tc.proto}}
		r := s.do(tc.method, tc.path, url.Values{})
		if r.status != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, r.status, tc.status)
		}
		for k, v := range want {
			if got := r.header.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", tc.name, k, got, v)
			}
		}
		csp := r.header.Get("Content-Security-Policy")
		for _, d := range []string{"default-src 'none'", "frame-ancestors 'none'", "form-action 'self'"} {
			if !strings.Contains(csp, d) {
				t.Errorf("%s: Content-Security-Policy %q lacks %q", tc.name, csp, d)
			}
		}
		if hsts := r.header.Get("Strict-Transport-Security"); (hsts != "") != (tc.proto == "https") {
			t.Errorf("%s over %s: Strict-Transport-Security %q", tc.name, tc.proto, hsts)
		}
	}
	// X-Forwarded-Proto from a peer that is not a trusted proxy is ignored.
	s2 := newSite(t, nil)
	s2.proxy = http.Header{"X-Forwarded-Proto": {"https"}}
	if r := s2.do("GET", "/", nil); r.header.Get("Strict-Transport-Security") != "" {
		t.Error("untrusted peer's X-Forwarded-Proto https turned HSTS on")
	}
}

func TestClientAddress(t *testing.T) {
	srv := &Server{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8")}}
	for _, tc := range []struct {
		name, remote string
		xff          []string
		want         string // "" : refused
		https        bool
	}{
		{"direct client", "198.51.100.7:4000", nil, "198.51.100.7", false},
		{"direct client's forged header ignored", "198.51.100.7:4000", []string{"192.0.2.1"}, "198.51.100.7", false},
		{"mapped address unmapped", "[::ffff:198.51.100.7]:4000", nil, "198.51.100.7", false},
		{"through the proxy", "127.0.0.1:4000", []string{"203.0.113.5"}, "203.0.113.5", false},
		{"client's own entry before the proxy's is not believed", "127.0.0.1:4000", []string{"192.0.2.1, 203.0.113.5"}, "203.0.113.5", false},
		{"two trusted proxies", "127.0.0.1:4000", []string{"203.0.113.5, 10.1.2.3"}, "203.0.113.5", false},
		{"header lines joined", "127.0.0.1:4000", []string{"192.0.2.1", "203.0.113.5"}, "203.0.113.5", false},
		{"ipv6 with port", "127.0.0.1:4000", []string{"[2001:db8::1]:555"}, "2001:db8::1", false},
		{"only trusted hops: the left-most", "127.0.0.1:4000", []string{"10.9.9.9, 10.1.2.3"}, "10.9.9.9", false},
		{"proxy without the header", "127.0.0.1:4000", nil, "", false},
		{"garbage entry", "127.0.0.1:4000", []string{"unknown"}, "", false},
		{"unix socket peer is the proxy", "@", []string{"203.0.113.5"}, "203.0.113.5", false},
		{"unix socket peer without the header", "", nil, "", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.remote
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		c, err := srv.client(r)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("%s: client = %v, want an error", tc.name, c.addr)
		case tc.want != "" && (err != nil || c.addr.String() != tc.want):
			t.Errorf("%s: client = %v, %v; want %s", tc.name, c.addr, err, tc.want)
		}
	}
	// A trusted proxy without X-Forwarded-For gets 400: its own address
	// must never be offered for approval.
	s := newSite(t, func(srv *Server) { srv.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} })
	if r := s.do("GET", "/", nil); r.status != http.StatusBadRequest {
		t.Errorf("trusted proxy without X-Forwarded-For: status %d, want 400", r.status)
	}
}

func TestApprove(t *testing.T) {
	s := newSite(t, func(srv *Server) { srv.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")} })
	s.proxy = http.Header{"X-Forwarded-For": {"203.0.113.5"}}
	alice := s.svc.enrol(t, "alice@example.org")
	s.svc.enrol(t, "bob@example.org")
	now := s.clk.Now()
	s.svc.refused(t, "alice@example.org", "198.51.100.7", 24, "imap", now.Add(-2*time.Minute))
	s.svc.refused(t, "alice@example.org", "2001:db8:1::5", 56, "smtp", now.Add(-50*time.Minute))
	s.svc.refused(t, "alice@example.org", "198.51.100.7", 24, "pop3", now.Add(-30*time.Second))
	s.svc.refused(t, "bob@example.org", "192.0.2.99", 24, "imap", now)

	home := s.do("GET", "/", nil)
	for _, want := range []string{`<label for="login">`, `<label for="code">`, `autocomplete="one-time-code"`, "autofocus"} {
		if !strings.Contains(home.body, want) {
			t.Errorf("login page lacks %s", want)
		}
	}
	// A wrong code, and a user who is not enrolled, get the same answer.
	for _, who := range []string{"alice@example.org", "nobody@example.org"} {
		r := s.do("POST", "/login", url.Values{"csrf": {csrfOf(t, home.body)}, "login": {who}, "code": {"000000"}})
		if r.status != http.StatusForbidden || !strings.Contains(r.body, "The login or the code was not accepted") {
			t.Errorf("wrong code for %s: status %d:\n%s", who, r.status, r.body)
		}
		if !strings.Contains(r.body, `role="alert"`) || !strings.Contains(r.body, `aria-invalid="true"`) {
			t.Errorf("wrong code for %s: the error is not announced", who)
		}
	}
	page := s.signIn("alice@example.org", alice)
	for _, want := range []string{
		"IMAP from 198.51.100.7, 2 minutes ago",
		"SMTP from 2001:db8:1::5, 50 minutes ago",
		"POP3 from 198.51.100.7, just now",
		"This browser&#39;s address, 203.0.113.5 (approves its network 203.0.113.0/24)",
		"for 30 days",
	} {
		if !strings.Contains(page.body, want) {
			t.Errorf("approval page lacks %q:\n%s", want, page.body)
		}
	}
	if strings.Contains(page.body, "192.0.2.99") || strings.Contains(page.body, "bob") {
		t.Errorf("approval page of alice shows bob's logins:\n%s", page.body)
	}
	csrf := csrfOf(t, page.body)

	// Another user's pending login cannot be approved by posting it.
	r := s.do("POST", "/approve", url.Values{"csrf": {csrf}, "approve": {"192.0.2.0/24"}})
	if r.status != http.StatusBadRequest || len(s.svc.approved(t, "alice@example.org")) != 0 {
		t.Errorf("approving bob's network as alice: status %d, trusted %v", r.status, s.svc.approved(t, "alice@example.org"))
	}
	r = s.do("POST", "/approve", url.Values{"csrf": {csrf}})
	if r.status != http.StatusBadRequest || !strings.Contains(r.body, "Choose at least one") {
		t.Errorf("approving nothing: status %d", r.status)
	}
	// Several at once, the browser's own network among them.
	r = s.do("POST", "/approve", url.Values{"csrf": {csrf}, "approve": {"198.51.100.0/24", "203.0.113.0/24", "198.51.100.0/24"}})
	if r.status != http.StatusOK || !strings.Contains(r.body, "IMAP from 198.51.100.7") || !strings.Contains(r.body, "203.0.113.5") {
		t.Fatalf("approve: status %d:\n%s", r.status, r.body)
	}
	got := s.svc.approved(t, "alice@example.org")
	want := map[netip.Prefix]time.Duration{
		netip.MustParsePrefix("198.51.100.0/24"): 30 * 24 * time.Hour,
		netip.MustParsePrefix("203.0.113.0/24"):  30 * 24 * time.Hour,
	}
	if len(got) != len(want) || got[netip.MustParsePrefix("198.51.100.0/24")] != want[netip.MustParsePrefix("198.51.100.0/24")] ||
		got[netip.MustParsePrefix("203.0.113.0/24")] != want[netip.MustParsePrefix("203.0.113.0/24")] {
		t.Errorf("trusted = %v, want %v", got, want)
	}
	if len(s.svc.approved(t, "bob@example.org")) != 0 {
		t.Error("bob got an approval")
	}
	// The list now shows what is left.
	page = s.do("GET", "/", nil)
	if strings.Contains(page.body, "198.51.100.7") || !strings.Contains(page.body, "2001:db8:1::5") {
		t.Errorf("after approval the page shows:\n%s", page.body)
	}
	// Signing out ends the session.
	r = s.do("POST", "/logout", url.Values{"csrf": {csrfOf(t, page.body)}})
	if r.status != http.StatusSeeOther || s.srv.sessions.len() != 0 {
		t.Errorf("logout: status %d, %d sessions left", r.status, s.srv.sessions.len())
	}
	home = s.do("GET", "/", nil)
	if !strings.Contains(home.body, `<label for="login">`) {
		t.Error("after logout the page is not the login form")
	}
	// The code that signed in is used up.
	r = s.do("POST", "/login", url.Values{"csrf": {csrfOf(t, home.body)}, "login": {"alice@example.org"}, "code": {s.code(alice)}})
	if r.status != http.StatusForbidden || !strings.Contains(r.body, "each code works once") {
		t.Errorf("replayed code: status %d", r.status)
	}
	// While the totp jail refuses, the page says to wait.
	s.svc.lim.mu.Lock()
	s.svc.lim.closed = true
	s.svc.lim.mu.Unlock()
	s.clk.Add(30 * time.Second)
	r = s.do("POST", "/login", url.Values{"csrf": {csrfOf(t, home.body)}, "login": {"alice@example.org"}, "code": {s.code(alice)}})
	if r.status != http.StatusForbidden || !strings.Contains(r.body, "Too many wrong codes") {
		t.Errorf("jailed: status %d:\n%s", r.status, r.body)
	}
}

func TestCSRF(t *testing.T) {
	s := newSite(t, nil)
	secret := s.svc.enrol(t, "alice")
	home := s.do("GET", "/", nil)
	token := csrfOf(t, home.body)
	// Another browser (no cookie, or another cookie) cannot use the token.
	other := newSite(t, nil)
	other.hs.Close()
	other.hs = s.hs
	for _, tc := range []struct {
		name string
		site *site
		form url.Values
	}{
		{"no token", s, url.Values{"login": {"alice"}, "code": {s.code(secret)}}},
		{"wrong token", s, url.Values{"csrf": {token + "x"}, "login": {"alice"}, "code": {s.code(secret)}}},
		{"token without its cookie", other, url.Values{"csrf": {token}, "login": {"alice"}, "code": {s.code(secret)}}},
	} {
		if r := tc.site.do("POST", "/login", tc.form); r.status != http.StatusForbidden || s.srv.sessions.len() != 0 {
			t.Errorf("%s: status %d, %d sessions", tc.name, r.status, s.srv.sessions.len())
		}
	}
	page := s.signIn("alice", secret)
	s.svc.refused(t, "alice", "198.51.100.7", 24, "imap", s.clk.Now())
	// The anonymous form's token does not approve: the session's is needed.
	if r := s.do("POST", "/approve", url.Values{"csrf": {token}, "approve": {"198.51.100.0/24"}}); r.status != http.StatusForbidden {
		t.Errorf("approve with the login form's token: status %d, want 403", r.status)
	}
	if r := s.do("POST", "/approve", url.Values{"csrf": {csrfOf(t, page.body)}, "approve": {"198.51.100.0/24"}}); r.status != http.StatusOK {
		t.Errorf("approve with the session's token: status %d, want 200", r.status)
	}
}

func TestSessionExpires(t *testing.T) {
	s := newSite(t, func(srv *Server) { srv.SessionTTL = 5 * time.Minute })
	secret := s.svc.enrol(t, "alice")
	s.svc.refused(t, "alice", "198.51.100.7", 24, "imap", s.clk.Now())
	page := s.signIn("alice", secret)
	s.clk.Add(5*time.Minute - time.Second)
	if r := s.do("GET", "/", nil); !strings.Contains(r.body, "198.51.100.7") {
		t.Fatal("session ended before its time")
	}
	s.clk.Add(time.Second)
	if r := s.do("GET", "/", nil); strings.Contains(r.body, "198.51.100.7") || !strings.Contains(r.body, `<label for="login">`) {
		t.Errorf("session still open after SessionTTL:\n%s", r.body)
	}
	r := s.do("POST", "/approve", url.Values{"csrf": {csrfOf(t, page.body)}, "approve": {"198.51.100.0/24"}})
	if r.status != http.StatusForbidden || !strings.Contains(r.body, "Your session ended") || len(s.svc.approved(t, "alice")) != 0 {
		t.Errorf("approve after expiry: status %d, trusted %v", r.status, s.svc.approved(t, "alice"))
	}
}

func TestSessionsBounded(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	ss := &sessions{ttl: time.Minute, max: 3}
	var ids []string
	for i := range 5 {
		ids = append(ids, ss.add("u", t0.Add(time.Duration(i)*time.Second)).id)
		if n := ss.len(); n > 3 {
			t.Fatalf("after %d sessions %d held, max 3", i+1, n)
		}
	}
	now := t0.Add(5 * time.Second)
	for i, id := range ids {
		_, ok := ss.get(id, now)
		if want := i >= 2; ok != want {
			t.Errorf("session %d held = %v, want %v (the oldest make room)", i, ok, want)
		}
	}
	// Expired ones go first.
	ss.add("u", t0.Add(time.Minute+3*time.Second))
	if _, ok := ss.get(ids[4], t0.Add(time.Minute+3*time.Second)); !ok {
		t.Error("a live session was evicted while an expired one was held")
	}
}

func TestBodyBounded(t *testing.T) {
	s := newSite(t, func(srv *Server) { srv.MaxBody = 1024 })
	home := s.do("GET", "/", nil)
	r := s.do("POST", "/login", url.Values{"csrf": {csrfOf(t, home.body)}, "login": {strings.Repeat("a", 4096)}, "code": {"123456"}})
	if r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("4 KiB form with MaxBody 1 KiB: status %d, want 413", r.status)
	}
}

func TestServiceFailure(t *testing.T) {
	s := newSite(t, nil)
	secret := s.svc.enrol(t, "alice")
	home := s.do("GET", "/", nil)
	s.svc.mu.Lock()
	s.svc.fail = errors.New("store: dial tcp 10.0.0.9:6379: refused")
	s.svc.mu.Unlock()
	r := s.do("POST", "/login", url.Values{"csrf": {csrfOf(t, home.body)}, "login": {"alice"}, "code": {s.code(secret)}})
	if r.status != http.StatusServiceUnavailable || strings.Contains(r.body, "10.0.0.9") {
		t.Errorf("service down: status %d, body shows the error:\n%s", r.status, r.body)
	}
	if s.srv.sessions.len() != 0 {
		t.Error("a failed verification opened a session")
	}
}

func TestEnrol(t *testing.T) {
	s := newSite(t, nil)
	tok := s.svc.link(t, "carol@example.org")
	page := s.do("GET", "/enrol/"+tok, nil)
	if page.status != http.StatusOK {
		t.Fatalf("enrolment page: status %d", page.status)
	}
	m := regexp.MustCompile(`<code id="secret" class="secret">([A-Z2-7 ]+)</code>`).FindStringSubmatch(page.body)
	if m == nil {
		t.Fatalf("enrolment page does not show the secret:\n%s", page.body)
	}
	secret := strings.ReplaceAll(m[1], " ", "")
	if !strings.Contains(page.body, `src="`+tok+`/qr.png"`) || !strings.Contains(page.body, "carol@example.org") {
		t.Errorf("enrolment page lacks the QR code or the user:\n%s", page.body)
	}
	qr := s.do("GET", "/enrol/"+tok+"/qr.png", nil)
	img, err := png.Decode(bytes.NewReader([]byte(qr.body)))
	if err != nil || qr.header.Get("Content-Type") != "image/png" || img.Bounds().Dx() < 200 {
		t.Fatalf("qr.png: %v, %s", err, qr.header.Get("Content-Type"))
	}
	// A wrong first code does not enrol.
	r := s.do("POST", "/enrol/"+tok, url.Values{"csrf": {csrfOf(t, page.body)}, "code": {"000000"}})
	if r.status != http.StatusForbidden || !strings.Contains(r.body, "not accepted") || s.svc.enrolled(t, "carol@example.org") {
		t.Fatalf("wrong first code: status %d", r.status)
	}
	r = s.do("POST", "/enrol/"+tok, url.Values{"csrf": {csrfOf(t, r.body)}, "code": {s.code(secret)}})
	if r.status != http.StatusOK || !strings.Contains(r.body, "Two-factor sign-in is on") || !s.svc.enrolled(t, "carol@example.org") {
		t.Fatalf("right first code: status %d:\n%s", r.status, r.body)
	}
	if !strings.Contains(r.body, `href="../"`) {
		t.Errorf("the enrolled page does not link to the approval page:\n%s", r.body)
	}
	// The link is used up.
	for _, p := range []string{"/enrol/" + tok, "/enrol/" + tok + "/qr.png", "/enrol/" + strings.Repeat("x", 200)} {
		if r := s.do("GET", p, nil); r.status != http.StatusNotFound {
			t.Errorf("GET %.40s: status %d, want 404", p, r.status)
		}
	}
}

// TestBasePath: published under /mailguard/, with or without the proxy
// stripping it, cookies are scoped to it and links stay relative.
func TestBasePath(t *testing.T) {
	s := newSite(t, func(srv *Server) { srv.BasePath = "/mailguard" })
	for _, p := range []string{"/", "/mailguard/"} {
		r := s.do("GET", p, nil)
		if r.status != http.StatusOK || !strings.Contains(r.body, `action="login"`) || !strings.Contains(r.body, `href="./style.css"`) {
			t.Errorf("GET %s: status %d", p, r.status)
		}
		if c := r.header.Get("Set-Cookie"); c != "" && !strings.Contains(c, "Path=/mailguard/") {
			t.Errorf("GET %s: cookie %s", p, c)
		}
	}
	// The redirect after signing in is relative to the URL the browser
	// sees, not to the path the proxy stripped.
	secret := s.svc.enrol(t, "alice")
	home := s.do("GET", "/mailguard/", nil)
	r := s.do("POST", "/mailguard/login", url.Values{"csrf": {csrfOf(t, home.body)}, "login": {"alice"}, "code": {s.code(secret)}})
	if loc := r.header.Get("Location"); r.status != http.StatusSeeOther || loc != "./" {
		t.Errorf("sign in: status %d, Location %q; want 303 ./", r.status, loc)
	}
	if r := s.do("GET", "/mailguard/", nil); !strings.Contains(r.body, "Signed in as") {
		t.Error("the session cookie does not reach /mailguard/")
	}
}

func TestWords(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		ago  string
		span string
	}{
		{0, "just now", ""},
		{59 * time.Second, "just now", "1 minute"},
		{time.Minute, "1 minute ago", "1 minute"},
		{2*time.Minute + 59*time.Second, "2 minutes ago", "3 minutes"},
		{time.Hour, "1 hour ago", "1 hour"},
		{47 * time.Hour, "47 hours ago", "47 hours"},
		{30 * 24 * time.Hour, "30 days ago", "30 days"},
	} {
		if got := ago(tc.d); got != tc.ago {
			t.Errorf("ago(%v) = %q, want %q", tc.d, got, tc.ago)
		}
		if got := duration(tc.d); got != tc.span {
			t.Errorf("duration(%v) = %q, want %q", tc.d, got, tc.span)
		}
	}
}

// TestLogsRateLimited: a client hammering bad forms and a failing store
// makes one log line per cause per period, with the count held back, and
// no line carries the code.
func TestLogsRateLimited(t *testing.T) {
	lines := logtest.New()
	s := newSite(t, func(srv *Server) { srv.Log = slog.New(lines) })
	secret := s.svc.enrol(t, "alice")
	for range 50 {
		s.do("POST", "/login", url.Values{"csrf": {"forged"}, "login": {"alice"}, "code": {"123456"}})
	}
	if n, _ := lines.Count("totp web: form without a valid CSRF token"); n != 1 {
		t.Errorf("50 forged forms in one period: %d lines, want 1", n)
	}
	s.clk.Add(dedup.DefaultPeriod)
	s.do("POST", "/login", url.Values{"csrf": {"forged"}, "login": {"alice"}, "code": {"123456"}})
	if n, sup := lines.Count("totp web: form without a valid CSRF token"); n != 2 || sup[1] != 49 {
		t.Errorf("next period: %d lines, suppressed %v; want 2, [0 49]", n, sup)
	}
	home := s.do("GET", "/", nil)
	s.svc.mu.Lock()
	s.svc.fail = errors.New("store: timeout")
	s.svc.mu.Unlock()
	code := s.code(secret)
	for range 20 {
		s.do("POST", "/login", url.Values{"csrf": {csrfOf(t, home.body)}, "login": {"alice"}, "code": {code}})
	}
	if n, _ := lines.Count("totp web: service failed"); n != 1 {
		t.Errorf("20 store failures in one period: %d lines, want 1", n)
	}
	if strings.Contains(lines.String(), code) {
		t.Errorf("a code was logged:\n%s", lines.String())
	}
}

// TestServe: Serve answers on its listener until Close, then returns nil.
func TestServe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Service: newService(t, time.Now), Log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	resp, err := http.Get("http://" + l.Addr().String() + "/style.css")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/css; charset=utf-8" {
		t.Errorf("GET /style.css: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	srv.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve after Close = %v, want nil", err)
	}
}

// TestServeUnix: on a unix socket (totp.listen unix:/path) the peer is the
// proxy: its X-Forwarded-For names the browser, and without one the
// request is refused.
func TestServeUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "totp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	svc := newService(t, time.Now)
	srv := &Server{Service: svc, Log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		<-done
	}()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	do := func(method, xff string, form url.Values) (int, string) {
		req, _ := http.NewRequest(method, "http://totp/login", strings.NewReader(form.Encode()))
		if method == "GET" {
			req.URL.Path = "/"
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, _ := do("GET", "", nil); st != http.StatusBadRequest {
		t.Errorf("unix peer without X-Forwarded-For: status %d, want 400", st)
	}
	st, home := do("GET", "198.51.100.7", nil)
	if st != http.StatusOK {
		t.Fatalf("unix peer with X-Forwarded-For: status %d", st)
	}
	do("POST", "198.51.100.7", url.Values{"csrf": {csrfOf(t, home)}, "login": {"alice"}, "code": {"000000"}})
	if got := svc.lastFrom(); got != netip.MustParseAddr("198.51.100.7") {
		t.Errorf("code checked from %v, want 198.51.100.7", got)
	}
}
