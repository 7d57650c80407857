package web

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/pquerna/otp/totp"

	"github.com/mailguard/mailguard/contrib"
	"github.com/mailguard/mailguard/internal/browsertest"
	"github.com/mailguard/mailguard/internal/nginxtest"
)

// contribUpstream is totp.listen in contrib/nginx/mailguard-totp.conf.
const contribUpstream = "127.0.0.1:10032"

// behindNginx publishes upstream at /totp/ through a private nginx with TLS
// and contrib's location blocks, and returns the page's public URL.
func behindNginx(t *testing.T, upstream string) string {
	t.Helper()
	block, err := contrib.File(contrib.NginxTOTP)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(block), contribUpstream) {
		t.Fatalf("%s does not proxy to %s", contrib.NginxTOTP, contribUpstream)
	}
	return nginxtest.Start(t, strings.ReplaceAll(string(block), contribUpstream, upstream)) + "/totp/"
}

// TestBrowser drives the pages in a real headless chromium, with
// JavaScript turned off (they must work as plain forms), through nginx
// over TLS as contrib/nginx publishes them: enrol through the link,
// reading the secret from the page, then approve a refused login with a
// new code, and keep screenshots.
func TestBrowser(t *testing.T) {
	ctx := browsertest.New(t, true)
	s := newSite(t, func(srv *Server) {
		srv.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		srv.BasePath = "/totp"
	})
	base := behindNginx(t, strings.TrimPrefix(s.hs.URL, "http://"))
	tok := s.svc.link(t, "dave@example.org")

	browsertest.Do(t, ctx, "enrolment page",
		chromedp.Navigate(base+"enrol/"+tok),
		chromedp.WaitVisible(chromedp.ID("secret")),
	)
	secret := strings.ReplaceAll(browsertest.Get(t, ctx, "secret", chromedp.Text(chromedp.ID("secret"))), " ", "")
	focused := browsertest.Get(t, ctx, "focus", chromedp.Evaluate[string](`document.activeElement.id`))
	qrWidth := browsertest.Get(t, ctx, "qr", chromedp.Evaluate[int](`document.querySelector("img").naturalWidth`))
	browsertest.Screenshot(t, ctx, "totp-enrol.png")
	if len(secret) < 16 {
		t.Fatalf("secret on the page: %q", secret)
	}
	if focused != "code" {
		t.Errorf("focus on the enrolment page is on %q, want the code field", focused)
	}
	if qrWidth < 200 {
		t.Errorf("QR code image: naturalWidth %d, want about 256 (not loaded?)", qrWidth)
	}
	code := func() string {
		c, err := totp.GenerateCode(secret, s.clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	browsertest.Do(t, ctx, "confirming the enrolment",
		chromedp.SendKeys(chromedp.ID("code"), code()),
		chromedp.Submit(chromedp.ID("code")),
		chromedp.WaitVisible(chromedp.Search("//h1[text()='Two-factor sign-in is on']")),
	)

	// A mail program is refused from 198.51.100.7; approve it with the
	// next code (the first one is used up).
	s.svc.refused(t, "dave@example.org", "198.51.100.7", 24, "imap", s.clk.Now().Add(-2*time.Minute))
	s.clk.Add(30 * time.Second)
	browsertest.Do(t, ctx, "signing in",
		chromedp.Click(chromedp.CSS("main a"), chromedp.NodeVisible),
		chromedp.WaitVisible(chromedp.ID("login")),
		chromedp.SendKeys(chromedp.ID("login"), "dave@example.org"),
		chromedp.SendKeys(chromedp.ID("code"), code()),
		chromedp.Submit(chromedp.ID("code")),
		chromedp.WaitVisible(chromedp.ID("pending-0")),
	)
	label := browsertest.Get(t, ctx, "pending login", chromedp.Text(chromedp.CSS(`label[for="pending-0"]`)))
	browsertest.Screenshot(t, ctx, "totp-pending.png")
	// By keyboard alone: the focus starts on the first login; space ticks
	// it, Tab passes the browser's box to the button, Enter approves.
	if f := browsertest.Get(t, ctx, "focus", chromedp.Evaluate[string](`document.activeElement.id`)); f != "pending-0" {
		t.Errorf("focus on the approval page is on %q, want the first refused login", f)
	}
	browsertest.Do(t, ctx, "approving by keyboard",
		chromedp.KeyEvent(" "),
		chromedp.KeyEvent("\t"),
		chromedp.KeyEvent("\t"),
		chromedp.KeyEvent("\r"),
		chromedp.WaitVisible(chromedp.Search("//h1[text()='Approved']")),
	)
	browsertest.Screenshot(t, ctx, "totp-approved.png")
	if want := "IMAP from 198.51.100.7, 2 minutes ago"; label != want {
		t.Errorf("pending login reads %q, want %q", label, want)
	}
	if got := s.svc.approved(t, "dave@example.org"); len(got) != 1 || got[netip.MustParsePrefix("198.51.100.0/24")] == 0 {
		t.Errorf("approved networks: %v, want 198.51.100.0/24", got)
	}
}

// TestNginx: behind contrib's nginx block the page sees the browser's
// address (not one the browser forged in X-Forwarded-For) and https, so it
// sends HSTS and Secure cookies; the proxy passes the enrolment path.
func TestNginx(t *testing.T) {
	s := newSite(t, func(srv *Server) {
		srv.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		srv.BasePath = "/totp"
	})
	base := behindNginx(t, strings.TrimPrefix(s.hs.URL, "http://"))
	tok := s.svc.link(t, "erin@example.org")
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(u string, form url.Values) (*http.Response, string) {
		t.Helper()
		method, body := "GET", io.Reader(nil)
		if form != nil {
			method, body = "POST", strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, u, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		req.Header.Set("X-Forwarded-For", "192.0.2.66")
		req.Header.Set("X-Forwarded-Proto", "http")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, _ := get(strings.TrimSuffix(base, "/"), nil); resp.StatusCode != http.StatusMovedPermanently || !strings.HasSuffix(resp.Header.Get("Location"), "/totp/") {
		t.Errorf("GET /totp: status %d, Location %q; want 301 to /totp/", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, home := get(base, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Strict-Transport-Security") == "" {
		t.Errorf("GET %s: status %d, no HSTS over https", base, resp.StatusCode)
	}
	for _, k := range resp.Cookies() {
		if !k.Secure || !k.HttpOnly || k.SameSite != http.SameSiteStrictMode || k.Path != "/totp/" {
			t.Errorf("cookie %s: Secure %v HttpOnly %v SameSite %v Path %q", k.Name, k.Secure, k.HttpOnly, k.SameSite, k.Path)
		}
	}
	resp, _ = get(base+"login", url.Values{"csrf": {csrfOf(t, home)}, "login": {"erin@example.org"}, "code": {"000000"}})
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("wrong code through nginx: status %d, want 403", resp.StatusCode)
	}
	if from := s.svc.lastFrom(); from != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("the page saw the browser at %v, want 127.0.0.1 (nginx replaces the forged 192.0.2.66)", from)
	}
	if resp, page := get(base+"enrol/"+tok, nil); resp.StatusCode != 200 || !strings.Contains(page, "erin@example.org") {
		t.Errorf("enrolment link through nginx: status %d", resp.StatusCode)
	}
}
