package web

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// fakeService is an in-memory Service with real TOTP codes (pquerna/otp),
// one use per code step, for the handler tests.
type fakeService struct {
	now func() time.Time

	mu       sync.Mutex
	secrets  map[string]string // user -> base32 secret, once enrolled
	links    map[string]string // token -> user
	linkKeys map[string]*otp.Key
	lastStep map[string]int64
	pending  map[string][]Pending
	trusted  map[string]map[netip.Prefix]time.Duration
	fail     error      // when set, every call fails with it
	from     netip.Addr // the address of the last Verify
}

func newFake(now func() time.Time) *fakeService {
	return &fakeService{
		now: now, secrets: map[string]string{}, links: map[string]string{}, linkKeys: map[string]*otp.Key{},
		lastStep: map[string]int64{}, pending: map[string][]Pending{}, trusted: map[string]map[netip.Prefix]time.Duration{},
	}
}

// link makes an enrolment link for user and returns its token.
func (f *fakeService) link(user, token string) *otp.Key {
	key, err := totp.Generate(totp.GenerateOpts{Issuer: "mailguard test", AccountName: user})
	if err != nil {
		panic(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links[token] = user
	f.linkKeys[token] = key
	return key
}

func (f *fakeService) enrol(user string) string {
	key := f.link(user, "unused-"+user)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.secrets[user] = key.Secret()
	return key.Secret()
}

func (f *fakeService) check(user, secret, code string) error {
	now := f.now()
	for _, skew := range []int64{0, -1, 1} {
		at := now.Add(time.Duration(skew) * 30 * time.Second)
		want, _ := totp.GenerateCode(secret, at)
		step := at.Unix() / 30
		if code == want {
			if step <= f.lastStep[user] {
				return fmt.Errorf("fake: replayed: %w", ErrRefused)
			}
			f.lastStep[user] = step
			return nil
		}
	}
	return fmt.Errorf("fake: wrong code: %w", ErrRefused)
}

func (f *fakeService) Verify(_ context.Context, user, code string, from netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.from = from
	if f.fail != nil {
		return f.fail
	}
	secret, ok := f.secrets[user]
	if !ok {
		return fmt.Errorf("fake: not enrolled: %w", ErrRefused)
	}
	return f.check(user, secret, code)
}

func (f *fakeService) Pending(_ context.Context, user string) ([]Pending, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	return append([]Pending(nil), f.pending[user]...), nil
}

func (f *fakeService) Trust(_ context.Context, user string, p netip.Prefix, ttl time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if f.trusted[user] == nil {
		f.trusted[user] = map[netip.Prefix]time.Duration{}
	}
	f.trusted[user][p] = ttl
	var keep []Pending
	for _, q := range f.pending[user] {
		if q.Prefix != p {
			keep = append(keep, q)
		}
	}
	f.pending[user] = keep
	return nil
}

func (f *fakeService) PrefixOf(a netip.Addr) netip.Prefix {
	if a.Is4() {
		return netip.PrefixFrom(a, 24).Masked()
	}
	return netip.PrefixFrom(a, 56).Masked()
}

func (f *fakeService) Enrolment(_ context.Context, token string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return "", "", f.fail
	}
	user, ok := f.links[token]
	if !ok {
		return "", "", fmt.Errorf("fake: no such link: %w", ErrRefused)
	}
	return user, f.linkKeys[token].URL(), nil
}

func (f *fakeService) ConfirmEnrolment(_ context.Context, token, code string, _ netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	user, ok := f.links[token]
	if !ok {
		return fmt.Errorf("fake: no such link: %w", ErrRefused)
	}
	key := f.linkKeys[token]
	if err := f.check(user, key.Secret(), code); err != nil {
		return err
	}
	f.secrets[user] = key.Secret()
	delete(f.links, token)
	return nil
}

func (f *fakeService) trustedOf(user string) map[netip.Prefix]time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[netip.Prefix]time.Duration{}
	for p, d := range f.trusted[user] {
		out[p] = d
	}
	return out
}
