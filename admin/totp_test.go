package admin

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/store/memstore"
	"github.com/mailguard/mailguard/totp"
)

// serveTOTP runs an admin server on a socket with the given TOTP service
// (nil: TOTP off) and returns a client for it.
func serveTOTP(t *testing.T, svc TOTP) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{TOTP: svc, TOTPURL: "https://mail.example.org/totp/"}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() { s.Close(); <-done })
	return &Client{Socket: sock}
}

func newService(t *testing.T) *totp.Service {
	t.Helper()
	st, err := memstore.Open(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := totp.New(t.Context(), st, make([]byte, totp.KeySize), totp.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	ae, ok := err.(*APIError)
	if !ok || ae.Code != code {
		t.Errorf("%s = %v, want an API error %q", what, err, code)
	}
}

// TestTOTPCommands: each command over the socket, and the answers a
// script relies on (not enrolled 404, bad target 400, TOTP off 409, a
// wrong or replayed code is a "no", not an error).
func TestTOTPCommands(t *testing.T) {
	ctx := context.Background()
	off := serveTOTP(t, nil)
	_, err := off.TOTPStatus(ctx)
	wantCode(t, "status with TOTP off", err, CodeDisabled)

	c := serveTOTP(t, newService(t))
	_, err = c.TOTPTrust(ctx, "alice@example.org", "198.51.100.7", 0)
	wantCode(t, "trust before enroll", err, CodeNotFound)
	e, err := c.TOTPEnrol(ctx, "Alice@example.org", false)
	if err != nil || !strings.HasPrefix(e.URL, "otpauth://totp/") || e.User != "alice@example.org" {
		t.Fatalf("enroll = %+v, %v", e, err)
	}
	l, err := c.TOTPEnrol(ctx, "bob@example.org", true)
	if err != nil || !strings.HasPrefix(l.Link, "https://mail.example.org/totp/enrol/") || l.URL != "" {
		t.Errorf("enroll --link = %+v, %v", l, err)
	}
	code, _ := totp.Code(e.URL, time.Now())
	if r, err := c.TOTPCheck(ctx, "alice@example.org", code); err != nil || !r.OK {
		t.Errorf("check right code = %+v, %v", r, err)
	}
	if r, err := c.TOTPCheck(ctx, "alice@example.org", code); err != nil || r.OK || r.Reason != totp.ErrReplay.Error() {
		t.Errorf("check same code again = %+v, %v; want a no (replay)", r, err)
	}
	_, err = c.TOTPTrust(ctx, "alice@example.org", "198.51.100.0/25", 0)
	wantCode(t, "trust of a /25", err, CodeInvalid)
	a, err := c.TOTPTrust(ctx, "alice@example.org", "198.51.100.7", time.Hour)
	if err != nil || a.Prefix != "198.51.100.0/24" || time.Until(a.Expires) > time.Hour {
		t.Errorf("trust = %+v, %v", a, err)
	}
	if st, err := c.TOTPStatus(ctx); err != nil || st != (TOTPStatus{Enrolled: 1, Approvals: 1}) {
		t.Errorf("status = %+v, %v", st, err)
	}
	if us, err := c.TOTPList(ctx); err != nil || len(us) != 1 || len(us[0].Approvals) != 1 {
		t.Errorf("list = %+v, %v", us, err)
	}
	if n, err := c.TOTPUntrust(ctx, "alice@example.org", ""); n != 1 || err != nil {
		t.Errorf("untrust all = %d, %v", n, err)
	}
	_, err = c.TOTPUntrust(ctx, "alice@example.org", "")
	wantCode(t, "untrust with nothing approved", err, CodeNotFound)
	if ps, err := c.TOTPPending(ctx, "alice@example.org"); err != nil || len(ps) != 0 {
		t.Errorf("pending = %+v, %v", ps, err)
	}
	if err := c.TOTPDisable(ctx, "alice@example.org"); err != nil {
		t.Errorf("disable = %v", err)
	}
	wantCode(t, "disable again", c.TOTPDisable(ctx, "alice@example.org"), CodeNotFound)
	_, err = c.TOTPPending(ctx, "")
	wantCode(t, "pending without a user", err, CodeInvalid)
}
