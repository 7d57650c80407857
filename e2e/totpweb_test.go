package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/mailguard/mailguard/contrib"
	"github.com/mailguard/mailguard/internal/browsertest"
	"github.com/mailguard/mailguard/internal/nginxtest"
	"github.com/mailguard/mailguard/internal/testenv"
	"github.com/mailguard/mailguard/totp"
)

// TestTOTPPage: the whole TOTP flow as a user lives it, with real parts
// only: the mailguard binary, Dovecot as contrib configures it, nginx with
// TLS and contrib's location block for the page, and a headless chromium
// with JavaScript off. The user enrols through the one-time link
// `totp enroll --link` prints (reading the key from the page), their mail
// program is refused over IMAP with the page's URL, they approve that
// login on the page with the next code, and the same login succeeds.
func TestTOTPPage(t *testing.T) {
	ctx := browsertest.New(t, true)
	pagePort := testenv.FreePort(t)
	block, err := contrib.File(contrib.NginxTOTP)
	if err != nil {
		t.Fatal(err)
	}
	const contribListen = "127.0.0.1:10032"
	if !strings.Contains(string(block), contribListen) {
		t.Fatalf("%s does not proxy to totp.listen's default %s", contrib.NginxTOTP, contribListen)
	}
	pageURL := nginxtest.Start(t, strings.ReplaceAll(string(block), contribListen, fmt.Sprintf("127.0.0.1:%d", pagePort))) + "/totp"

	d := NewDaemon(t, "dovecot.api_header="+testAPIKey, "totp.enabled=true", "totp.url="+pageURL,
		fmt.Sprintf("totp.listen=127.0.0.1:%d", pagePort))
	d.Start()
	dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{})
	const phone = "127.0.1.2" // the mail program's address; the browser is elsewhere

	// Enrol through the link.
	out := d.MustCLI("totp", "enroll", testUser, "--link")
	link := regexp.MustCompile(regexp.QuoteMeta(pageURL) + `/enrol/\S+`).FindString(out)
	if link == "" {
		t.Fatalf("totp enroll --link printed no link under %s:\n%s", pageURL, out)
	}
	browsertest.Do(t, ctx, "enrolment page", chromedp.Navigate(link), chromedp.WaitVisible(chromedp.ID("secret")))
	secret := strings.ReplaceAll(browsertest.Get(t, ctx, "secret", chromedp.Text(chromedp.ID("secret"))), " ", "")
	otpauth := "otpauth://totp/mailguard:" + testUser + "?secret=" + secret + "&issuer=mailguard"
	browsertest.Screenshot(t, ctx, "e2e-totp-enrol.png")
	browsertest.Do(t, ctx, "confirming the enrolment",
		chromedp.SendKeys(chromedp.ID("code"), totpCode(t, otpauth)),
		chromedp.Submit(chromedp.ID("code")),
		chromedp.WaitVisible(chromedp.Search("//h1[text()='Two-factor sign-in is on']")),
	)
	if list := d.MustCLI("totp", "list"); !strings.Contains(list, testUser) {
		t.Fatalf("after the page's enrolment, totp list does not name %s:\n%s", testUser, list)
	}

	// The mail program is refused, with the page's URL.
	if r := imapLogin(t, dv.IMAP, phone, testUser, testPassword); !strings.HasPrefix(r, "a1 NO [ALERT]") || !strings.Contains(r, pageURL) {
		t.Fatalf("IMAP login from a new network = %q, want NO [ALERT] naming %s", r, pageURL)
	}

	// The code that enrolled is used up: wait for the next one, as the
	// user would.
	next := time.Now().Truncate(totp.Period * time.Second).Add(totp.Period*time.Second + time.Second)
	time.Sleep(time.Until(next))
	browsertest.Do(t, ctx, "signing in",
		chromedp.Click(chromedp.CSS("main a"), chromedp.NodeVisible),
		chromedp.WaitVisible(chromedp.ID("login")),
		chromedp.SendKeys(chromedp.ID("login"), testUser),
		chromedp.SendKeys(chromedp.ID("code"), totpCode(t, otpauth)),
		chromedp.Submit(chromedp.ID("code")),
		chromedp.WaitVisible(chromedp.ID("pending-0")),
	)
	label := browsertest.Get(t, ctx, "pending login", chromedp.Text(chromedp.CSS(`label[for="pending-0"]`)))
	if !strings.HasPrefix(label, "IMAP from "+phone+", ") {
		t.Fatalf("the page lists %q, want the refused IMAP login from %s", label, phone)
	}
	browsertest.Screenshot(t, ctx, "e2e-totp-pending.png")
	browsertest.Do(t, ctx, "approving",
		chromedp.Click(chromedp.ID("pending-0")),
		chromedp.Submit(chromedp.ID("pending-0")),
		chromedp.WaitVisible(chromedp.Search("//h1[text()='Approved']")),
	)
	browsertest.Screenshot(t, ctx, "e2e-totp-approved.png")

	// The same login now gets in.
	if r := imapLogin(t, dv.IMAP, phone, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
		t.Fatalf("IMAP login after approval on the page = %q, want OK", r)
	}
	if strings.Contains(d.Log(), secret) {
		t.Error("the daemon logged the TOTP secret")
	}
}
