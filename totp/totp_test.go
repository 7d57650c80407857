package totp

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
)

// fakeLimiter counts wrong codes and refuses at max of them per user.
type fakeLimiter struct {
	mu     sync.Mutex
	failed map[string]int
	max    int
}

func (l *fakeLimiter) CodeRefused(_ context.Context, _ netip.Addr, user string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max > 0 && l.failed[user] >= l.max, nil
}

func (l *fakeLimiter) CodeFailed(_ context.Context, _ netip.Addr, user string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed == nil {
		l.failed = map[string]int{}
	}
	l.failed[user]++
	return nil
}

type fixture struct {
	svc *Service
	st  *memstore.Store
	clk *fakeclock.Clock
	lim *fakeLimiter
	key []byte
}

// The start of a step, so that ±1 step is exact.
var t0 = time.Unix(1_800_000_000/Period*Period, 0)

func newFixture(t *testing.T) *fixture {
	t.Helper()
	clk := fakeclock.New(t0)
	st, err := memstore.Open(memstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	key := bytes.Repeat([]byte{7}, KeySize)
	lim := &fakeLimiter{}
	svc, err := New(t.Context(), st, key, Config{Now: clk.Now, Limiter: lim})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{svc, st, clk, lim, key}
}

func (f *fixture) enrol(t *testing.T, user string) string {
	t.Helper()
	e, err := f.svc.Enrol(t.Context(), user)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.URL, "otpauth://totp/mailguard:") {
		t.Fatalf("Enrol URL = %q", e.URL)
	}
	return e.URL
}

func code(t *testing.T, url string, at time.Time) string {
	t.Helper()
	c, err := Code(url, at)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var client = netip.MustParseAddr("198.51.100.7")

// TestSkewWindow: codes of the previous, current and next step are
// accepted; two steps away are not.
func TestSkewWindow(t *testing.T) {
	for _, c := range []struct {
		name   string
		offset time.Duration
		want   error
	}{
		{"two steps before", -2 * Period * time.Second, ErrWrongCode},
		{"one step before", -Period * time.Second, nil},
		{"now", 0, nil},
		{"one step after", Period * time.Second, nil},
		{"two steps after", 2 * Period * time.Second, ErrWrongCode},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			url := f.enrol(t, "alice@example.org")
			f.clk.Add(10 * time.Second) // inside the step
			err := f.svc.Verify(t.Context(), "alice@example.org", code(t, url, f.clk.Now().Add(c.offset)), client)
			if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Errorf("Verify(code at %v) = %v, want %v", c.offset, err, c.want)
			}
		})
	}
}

// TestReplayRefused: a code is accepted once; a code of an earlier step is
// refused after a later one was used; both count as wrong codes.
func TestReplayRefused(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	url := f.enrol(t, "Alice@Example.org")
	now := f.clk.Now()
	if err := f.svc.Verify(ctx, "alice@example.org", code(t, url, now), client); err != nil {
		t.Fatalf("first use = %v", err)
	}
	if err := f.svc.Verify(ctx, "ALICE@example.org", code(t, url, now), client); !errors.Is(err, ErrReplay) {
		t.Errorf("second use = %v, want ErrReplay", err)
	}
	f.clk.Add(Period * time.Second)
	if err := f.svc.Verify(ctx, "alice@example.org", code(t, url, now), client); !errors.Is(err, ErrReplay) {
		t.Errorf("previous step's code after use = %v, want ErrReplay", err)
	}
	if err := f.svc.Verify(ctx, "alice@example.org", code(t, url, f.clk.Now()), client); err != nil {
		t.Errorf("next step's code = %v, want accepted", err)
	}
	if got := f.lim.failed["alice@example.org"]; got != 2 {
		t.Errorf("wrong codes counted = %d, want 2 (the replays)", got)
	}
}

// TestWrongCodesCountedAndRefused: wrong codes and codes for users who did
// not enrol count; once the jail refuses, even the right code is refused.
func TestWrongCodesCountedAndRefused(t *testing.T) {
	f := newFixture(t)
	f.lim.max = 3
	ctx := t.Context()
	url := f.enrol(t, "alice@example.org")
	for _, c := range []string{"000000", "12345", "abcdef"} {
		if err := f.svc.Verify(ctx, "alice@example.org", c, client); !errors.Is(err, ErrWrongCode) {
			t.Errorf("Verify(%q) = %v, want ErrWrongCode", c, err)
		}
	}
	if err := f.svc.Verify(ctx, "alice@example.org", code(t, url, f.clk.Now()), client); !errors.Is(err, ErrRefused) {
		t.Errorf("right code after 3 wrong = %v, want ErrRefused", err)
	}
	if err := f.svc.Verify(ctx, "bob@example.org", "123456", client); !errors.Is(err, ErrNotEnrolled) {
		t.Errorf("not enrolled = %v, want ErrNotEnrolled", err)
	}
	if f.lim.failed["bob@example.org"] != 1 {
		t.Errorf("a code for a user without TOTP was not counted")
	}
}

// TestWrongKey: a Service with another key does not start over enrolled
// users, and says why.
func TestWrongKey(t *testing.T) {
	f := newFixture(t)
	f.enrol(t, "alice@example.org")
	other := bytes.Repeat([]byte{8}, KeySize)
	_, err := New(t.Context(), f.st, other, Config{Now: f.clk.Now})
	if !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), "does not open with this key") {
		t.Errorf("New with another key = %v, want ErrKey", err)
	}
	if _, err := New(t.Context(), f.st, other[:16], Config{}); !errors.Is(err, ErrKey) {
		t.Errorf("New with a short key = %v, want ErrKey", err)
	}
	if _, err := New(t.Context(), f.st, f.key, Config{Now: f.clk.Now}); err != nil {
		t.Errorf("New with the same key = %v", err)
	}
}

// TestTamperedCiphertext: a sealed secret with any byte changed, or moved
// to another user's record, does not open; the error holds no secret.
func TestTamperedCiphertext(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	url := f.enrol(t, "alice@example.org")
	e, err := f.st.Enrolment(ctx, "alice@example.org")
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.SplitN(strings.SplitN(url, "secret=", 2)[1], "&", 2)[0]
	for i := range e.Secret {
		bad := bytes.Clone(e.Secret)
		bad[i] ^= 0x01
		if err := f.st.Enrol(ctx, store.Enrolment{User: "alice@example.org", Secret: bad}); err != nil {
			t.Fatal(err)
		}
		err := f.svc.Verify(ctx, "alice@example.org", code(t, url, f.clk.Now()), client)
		if !errors.Is(err, ErrKey) {
			t.Fatalf("byte %d flipped: Verify = %v, want ErrKey", i, err)
		}
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("error shows the secret: %v", err)
		}
	}
	// Alice's intact record under Bob's name.
	if err := f.st.Enrol(ctx, store.Enrolment{User: "bob@example.org", Secret: e.Secret}); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Verify(ctx, "bob@example.org", code(t, url, f.clk.Now()), client); !errors.Is(err, ErrKey) {
		t.Errorf("secret moved to another user: Verify = %v, want ErrKey", err)
	}
}

// TestEnrolLink: the link shows a secret that counts only after a right
// first code; a wrong code leaves it; the link works once; the confirming
// code cannot be replayed.
func TestEnrolLink(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	tok, err := f.svc.NewEnrolLink(ctx, "Carol@example.org")
	if err != nil {
		t.Fatal(err)
	}
	user, url, err := f.svc.Enrolment(ctx, tok)
	if err != nil || user != "carol@example.org" || !strings.HasPrefix(url, "otpauth://") {
		t.Fatalf("Enrolment(link) = %q, %q, %v", user, url, err)
	}
	if _, err := f.st.Enrolment(ctx, "carol@example.org"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("enrolled before the first code: %v", err)
	}
	if err := f.svc.ConfirmEnrolment(ctx, tok, "000000", client); !errors.Is(err, ErrWrongCode) {
		t.Errorf("ConfirmEnrolment(wrong) = %v, want ErrWrongCode", err)
	}
	c := code(t, url, f.clk.Now())
	if err := f.svc.ConfirmEnrolment(ctx, tok, c, client); err != nil {
		t.Fatalf("ConfirmEnrolment(right) = %v", err)
	}
	if err := f.svc.ConfirmEnrolment(ctx, tok, c, client); !errors.Is(err, ErrNoLink) {
		t.Errorf("link used twice: %v, want ErrNoLink", err)
	}
	if _, _, err := f.svc.Enrolment(ctx, tok); !errors.Is(err, ErrNoLink) {
		t.Errorf("Enrolment(used link) = %v, want ErrNoLink", err)
	}
	if err := f.svc.Verify(ctx, "carol@example.org", c, client); !errors.Is(err, ErrReplay) {
		t.Errorf("the confirming code again = %v, want ErrReplay", err)
	}
	if _, _, err := f.svc.Enrolment(ctx, "nonsense"); !errors.Is(err, ErrNoLink) {
		t.Errorf("Enrolment(unknown) = %v, want ErrNoLink", err)
	}
	tok2, _ := f.svc.NewEnrolLink(ctx, "dave@example.org")
	f.clk.Add(DefaultLinkTTL)
	if _, _, err := f.svc.Enrolment(ctx, tok2); !errors.Is(err, ErrNoLink) {
		t.Errorf("Enrolment(expired link) = %v, want ErrNoLink", err)
	}
}

// TestTrust: approvals cover the trust prefix, drop the pending logins
// they cover, and need an enrolment; typed prefixes must have the trust
// length.
func TestTrust(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	if got := f.svc.PrefixOf(netip.MustParseAddr("::ffff:198.51.100.7")); got != netip.MustParsePrefix("198.51.100.0/24") {
		t.Errorf("PrefixOf(v4-mapped) = %v", got)
	}
	if got := f.svc.PrefixOf(netip.MustParseAddr("2001:db8:1:2ff::1")); got != netip.MustParsePrefix("2001:db8:1:200::/56") {
		t.Errorf("PrefixOf(v6) = %v", got)
	}
	p := f.svc.PrefixOf(client)
	if err := f.svc.Trust(ctx, "alice@example.org", p, 0); !errors.Is(err, ErrNotEnrolled) {
		t.Errorf("Trust(not enrolled) = %v", err)
	}
	f.enrol(t, "alice@example.org")
	f.st.AddPending(ctx, store.Pending{User: "alice@example.org", Prefix: p, Protocol: "imap"}, time.Hour)
	if err := f.svc.Trust(ctx, "alice@example.org", p, 0); err != nil {
		t.Fatal(err)
	}
	as, _ := f.svc.Approvals(ctx, "alice@example.org")
	if len(as) != 1 || !as[0].Expires.Equal(f.clk.Now().Add(DefaultTrustTTL)) {
		t.Errorf("Approvals = %+v, want one for trust_ttl", as)
	}
	if ps, _ := f.svc.Pending(ctx, "alice@example.org"); len(ps) != 0 {
		t.Errorf("pending after Trust = %+v", ps)
	}
	for _, c := range []struct {
		in   string
		want string
	}{{"198.51.100.9", "198.51.100.0/24"}, {"198.51.100.0/24", "198.51.100.0/24"}, {"2001:db8::1", "2001:db8::/56"}, {"198.51.100.0/25", ""}, {"alice", ""}} {
		got, err := f.svc.TrustPrefixOf(c.in)
		if c.want == "" && !errors.Is(err, ErrPrefix) || c.want != "" && got.String() != c.want {
			t.Errorf("TrustPrefixOf(%q) = %v, %v; want %q", c.in, got, err, c.want)
		}
	}
	n, err := f.svc.Untrust(ctx, "alice@example.org", netip.Prefix{})
	if n != 1 || err != nil {
		t.Errorf("Untrust(all) = %d, %v", n, err)
	}
}

// TestKeyFile: created 0600 when allowed, read back the same, refused when
// missing, readable by others or malformed.
func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "totp.key")
	if _, err := LoadKey(path, false); !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("LoadKey(missing) = %v", err)
	}
	k1, err := LoadKey(path, true)
	if err != nil || len(k1) != KeySize {
		t.Fatalf("LoadKey(create) = %d bytes, %v", len(k1), err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	k2, err := LoadKey(path, true)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Errorf("second LoadKey = %v: a different key", err)
	}
	os.Chmod(path, 0o644)
	if _, err := LoadKey(path, false); !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), "readable by others") {
		t.Errorf("LoadKey(0644) = %v", err)
	}
	os.WriteFile(path, []byte("short\n"), 0o600)
	os.Chmod(path, 0o600)
	if _, err := LoadKey(path, false); !errors.Is(err, ErrKey) || !strings.Contains(err.Error(), "64 digits") {
		t.Errorf("LoadKey(malformed) = %v", err)
	}
}

// TestQR: the PNG decodes, the terminal code is square-ish and made of
// half blocks only.
func TestQR(t *testing.T) {
	url := "otpauth://totp/mailguard:alice@example.org?algorithm=SHA1&digits=6&issuer=mailguard&period=30&secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
	b, err := PNG(url, 256)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil || img.Bounds().Dx() < 200 || img.Bounds().Dx() != img.Bounds().Dy() {
		t.Errorf("PNG = %v, %v", img.Bounds(), err)
	}
	s, err := Terminal(url)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	w := len([]rune(lines[0]))
	if w < 25 || len(lines) != (w+1)/2 {
		t.Errorf("terminal QR %d wide, %d lines", w, len(lines))
	}
	if strings.Trim(s, "█▀▄ \n") != "" {
		t.Errorf("terminal QR has other characters")
	}
}
