package web

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp"

	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
	"github.com/mailguard/mailguard/totp"
)

// service is the real totp.Service over an embedded store, on the test's
// clock, with a limiter the test can close.
type service struct {
	*totp.Service
	st  *memstore.Store
	lim *limiter

	mu   sync.Mutex
	from netip.Addr // the address of the last Verify
	fail error      // when set, every call fails with it
}

func newService(t *testing.T, now func() time.Time) *service {
	t.Helper()
	st, err := memstore.Open(memstore.Options{Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	lim := &limiter{}
	svc, err := totp.New(t.Context(), st, bytes.Repeat([]byte{7}, totp.KeySize), totp.Config{Now: now, Limiter: lim, Issuer: "mailguard test", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return &service{Service: svc, st: st, lim: lim}
}

func (s *service) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fail
}

func (s *service) Verify(ctx context.Context, user, code string, from netip.Addr) error {
	s.mu.Lock()
	s.from = from
	s.mu.Unlock()
	if err := s.err(); err != nil {
		return err
	}
	return s.Service.Verify(ctx, user, code, from)
}

func (s *service) Pending(ctx context.Context, user string) ([]Pending, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Service.Pending(ctx, user)
}

func (s *service) lastFrom() netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.from
}

// enrol enrols user and returns the secret.
func (s *service) enrol(t *testing.T, user string) string {
	t.Helper()
	e, err := s.Enrol(t.Context(), user)
	if err != nil {
		t.Fatal(err)
	}
	k, err := otp.NewKeyFromURL(e.URL)
	if err != nil {
		t.Fatal(err)
	}
	return k.Secret()
}

// link makes an enrolment link for user and returns its token.
func (s *service) link(t *testing.T, user string) string {
	t.Helper()
	token, err := s.NewEnrolLink(t.Context(), user)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// refused records a login refused for want of an approval, as the
// after-auth check does.
func (s *service) refused(t *testing.T, user, addr string, prefix int, protocol string, at time.Time) {
	t.Helper()
	a := netip.MustParseAddr(addr)
	p := netip.PrefixFrom(a, prefix).Masked()
	if err := s.st.AddPending(t.Context(), store.Pending{User: user, Prefix: p, Addr: a, Protocol: protocol, At: at}, time.Hour); err != nil {
		t.Fatal(err)
	}
}

// approved returns user's approvals and how long each lasts.
func (s *service) approved(t *testing.T, user string) map[netip.Prefix]time.Duration {
	t.Helper()
	as, err := s.Approvals(t.Context(), user)
	if err != nil {
		t.Fatal(err)
	}
	m := map[netip.Prefix]time.Duration{}
	for _, a := range as {
		m[a.Prefix] = a.Expires.Sub(a.Created)
	}
	return m
}

func (s *service) enrolled(t *testing.T, user string) bool {
	t.Helper()
	_, err := s.st.Enrolment(t.Context(), user)
	return err == nil
}

// limiter refuses every code once closed (the totp jail banned).
type limiter struct {
	mu     sync.Mutex
	closed bool
}

func (l *limiter) CodeRefused(context.Context, netip.Addr, string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed, nil
}

func (l *limiter) CodeFailed(context.Context, netip.Addr, string) error { return nil }
