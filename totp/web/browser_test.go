package web

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/pquerna/otp/totp"

	"github.com/mailguard/mailguard/internal/testenv"
)

// browser starts Debian's headless chromium for t and returns a context
// that drives one tab of it.
func browser(t *testing.T) context.Context {
	t.Helper()
	exe := testenv.Command(t, "chromium")
	testenv.Long(t, "starts a browser")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // as root in a container: no user namespace sandbox
		chromedp.DisableGPU,
		chromedp.WindowSize(800, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTime := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() {
		cancelTime()
		cancelTab()
		cancelAlloc() // waits for the browser to exit
	})
	if err := chromedp.Do(ctx); err != nil {
		testenv.Missing(t, "chromium does not start: "+err.Error())
	}
	return ctx
}

// artifact returns where a test's file for people goes: under
// $MAILGUARD_TEST_ARTIFACTS when set (CI keeps it), else the test's
// temporary directory.
func artifact(t *testing.T, name string) string {
	dir := os.Getenv("MAILGUARD_TEST_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

// TestBrowser drives the pages in a real headless chromium, with
// JavaScript turned off (they must work as plain forms) behind a simulated
// TLS proxy: enrol through the link, reading the secret from the page,
// then approve a refused login with a new code, and keep a screenshot.
func TestBrowser(t *testing.T) {
	ctx := browser(t)
	s := newSite(t, func(srv *Server) {
		srv.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		srv.BasePath = "/mailguard/"
	})
	s.fake.link("dave@example.org", "link-token-1")
	base := s.hs.URL + "/mailguard/"

	call := func(f func(context.Context, *chromedp.Target) error) chromedp.Action[chromedp.Void] {
		return chromedp.Func(f)
	}
	err := chromedp.Do(ctx,
		call(func(ctx context.Context, t *chromedp.Target) error {
			_, err := cdp.Call(ctx, t, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
			return err
		}),
		call(func(ctx context.Context, t *chromedp.Target) error {
			if _, err := cdp.Call(ctx, t, network.Enable, network.EnableParams{}); err != nil {
				return err
			}
			_, err := cdp.Call(ctx, t, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
				Headers: network.Headers{"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https"}})
			return err
		}),
		chromedp.Navigate(base+"enrol/link-token-1"),
		chromedp.WaitVisible(chromedp.ID("secret")),
	)
	if err != nil {
		t.Fatalf("enrolment page: %v", err)
	}
	secret := must(chromedp.Run(ctx, chromedp.Text(chromedp.ID("secret"))))(t)
	focused := must(chromedp.Run(ctx, chromedp.Evaluate[string](`document.activeElement.id`)))(t)
	qrWidth := must(chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelector("img").naturalWidth`)))(t)
	secret = strings.ReplaceAll(secret, " ", "")
	if len(secret) < 16 {
		t.Fatalf("secret on the page: %q", secret)
	}
	if focused != "code" {
		t.Errorf("focus on the enrolment page is on %q, want the code field", focused)
	}
	screenshot(t, ctx, "totp-enrol.png")
	if qrWidth != 256 {
		t.Errorf("QR code image: naturalWidth %d, want 256 (not loaded?)", qrWidth)
	}
	code := func() string {
		c, err := totp.GenerateCode(secret, s.clk.now())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	err = chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("code"), code()),
		chromedp.Submit(chromedp.ID("code")),
		chromedp.WaitVisible(chromedp.Search("//h1[text()='Two-factor sign-in is on']")),
	)
	if err != nil {
		t.Fatalf("confirming the enrolment: %v", err)
	}

	// A mail program is refused from 198.51.100.7; approve it with the
	// next code (the first one is used up).
	s.fake.mu.Lock()
	s.fake.pending["dave@example.org"] = []Pending{{Prefix: netip.MustParsePrefix("198.51.100.7/32"), Protocol: "imap", At: s.clk.now().Add(-2 * time.Minute)}}
	s.fake.mu.Unlock()
	s.clk.add(30 * time.Second)
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = chromedp.Do(sctx,
		chromedp.Click(chromedp.CSS("main a"), chromedp.NodeVisible),
		chromedp.WaitVisible(chromedp.ID("login")),
		chromedp.SendKeys(chromedp.ID("login"), "dave@example.org"),
		chromedp.SendKeys(chromedp.ID("code"), code()),
		chromedp.Submit(chromedp.ID("code")),
		chromedp.WaitVisible(chromedp.ID("pending-0")),
	)
	if err != nil {
		t.Fatalf("signing in: %v\n%s", err, pageText(ctx))
	}
	label := must(chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`label[for="pending-0"]`))))(t)
	screenshot(t, ctx, "totp-pending.png")
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("pending-0")),
		chromedp.Submit(chromedp.ID("pending-0")),
		chromedp.WaitVisible(chromedp.Search("//h1[text()='Approved']")),
	)
	if err != nil {
		t.Fatalf("approving: %v", err)
	}
	title := must(chromedp.Run(ctx, chromedp.Title()))(t)
	if label != "IMAP from 198.51.100.7, 2 minutes ago" {
		t.Errorf("pending login reads %q", label)
	}
	if got := s.fake.trustedOf("dave@example.org"); len(got) != 1 || got[netip.MustParsePrefix("198.51.100.7/32")] == 0 {
		t.Errorf("approved networks: %v, want 198.51.100.7/32", got)
	}
	t.Logf("last page: %q", title)
	screenshot(t, ctx, "totp-approved.png")
}

// screenshot saves the whole page as an artifact PNG.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png := must(chromedp.Run(ctx, chromedp.FullScreenshot(100)))(t)
	path := artifact(t, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
}

// pageText returns the text of the current page, for a failure message.
func pageText(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	txt, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.location.href + "\n" + document.body.innerText`))
	if err != nil {
		return "(page unreadable: " + err.Error() + ")"
	}
	return txt
}

// must returns v, or fails the test with err.
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatalf("browser: %v", err)
		}
		return v
	}
}
