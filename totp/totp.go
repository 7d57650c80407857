// Package totp is mailguard's second factor for mail logins: TOTP (RFC 6238,
// through github.com/pquerna/otp) enrolments whose secrets are sealed with
// AES-256-GCM, and approved devices.
//
// IMAP, POP3 and SMTP AUTH clients keep one password and have no second
// prompt, so a code cannot be typed at login. Instead a user who has
// enrolled logs in over those protocols only from approved devices: a (user,
// trust prefix) pair approved with a current code for a while (TrustTTL).
// guard refuses the after-auth allow of an enrolled user from an unapproved
// prefix and keeps the attempt as a pending login; the approval page
// (totp/web) and the CLI approve it through a Service.
//
// A code is accepted once per user (the last used time step is stored) and
// within one step of the clock either way; wrong codes are failures of the
// totp jail (Limiter), per user and per client prefix. Secrets and codes are
// never logged, nor put in an error.
package totp

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/pquerna/otp"
	ptotp "github.com/pquerna/otp/totp"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/store"
)

// Defaults of the zero Config fields (totp.* in the config).
const (
	DefaultIssuer   = "mailguard"
	DefaultTrustTTL = 30 * 24 * time.Hour
	// DefaultLinkTTL is how long an enrolment link works.
	DefaultLinkTTL = 24 * time.Hour
)

// DefaultTrustPrefix: an approval covers the client's IPv4 /24 or IPv6 /56,
// so that a phone moving inside its carrier's block stays approved.
var DefaultTrustPrefix = Prefixes{IPv4: 24, IPv6: 56}

// Code parameters: what every authenticator app does by default.
const (
	Period = 30 // seconds per step
	Digits = 6
	// Skew is how many steps before or after now a code may belong to.
	Skew = 1
	// secretSize is the secret's length in bytes (160 bits, RFC 4226).
	secretSize = 20
)

// Errors of Verify and the enrolment calls; match them with errors.Is.
var (
	ErrWrongCode   = errors.New("wrong code")
	ErrReplay      = errors.New("code already used")
	ErrNotEnrolled = errors.New("not enrolled")
	ErrRefused     = errors.New("too many wrong codes: try again later")
	ErrNoLink      = errors.New("enrolment link unknown, used or expired")
	ErrPrefix      = errors.New("bad prefix")
)

// Prefixes are the trust prefix lengths; a zero field means its
// DefaultTrustPrefix value.
type Prefixes struct{ IPv4, IPv6 int }

// Pending is a login refused for want of an approval (store.Pending):
// Prefix, Addr, Protocol, At.
type Pending = store.Pending

// Approval is an approved device (store.Approval).
type Approval = store.Approval

// Limiter is the totp jail: it counts wrong codes per user and per client
// prefix and refuses codes while either is banned. guard.Guard implements
// it. An invalid address counts and checks the user alone.
type Limiter interface {
	CodeRefused(ctx context.Context, a netip.Addr, user string) (bool, error)
	CodeFailed(ctx context.Context, a netip.Addr, user string) error
}

// Config holds a Service's settings; every zero field has a default.
type Config struct {
	Issuer      string        // shown in authenticator apps; zero: DefaultIssuer
	TrustTTL    time.Duration // how long an approval lasts; zero: DefaultTrustTTL
	TrustPrefix Prefixes      // what an approval covers; zero fields: DefaultTrustPrefix
	LinkTTL     time.Duration // enrolment links; zero: DefaultLinkTTL
	Limiter     Limiter       // nil: wrong codes are not limited (tests only)
	Now         func() time.Time
	Log         *slog.Logger
}

// Service enrols users, verifies codes and keeps approvals. It is safe for
// concurrent use.
type Service struct {
	st     store.TOTPStore
	seal   *sealer
	issuer string
	ttl    time.Duration
	bits   Prefixes
	link   time.Duration
	lim    Limiter
	now    func() time.Time
	log    *slog.Logger
}

// New returns a Service over st with the key (KeySize bytes). It checks the
// key against a stored enrolment: a key that does not open the secrets
// already stored is an error (ErrKey), never a silent disable.
func New(ctx context.Context, st store.TOTPStore, key []byte, c Config) (*Service, error) {
	sl, err := newSealer(key)
	if err != nil {
		return nil, err
	}
	s := &Service{st: st, seal: sl, issuer: c.Issuer, ttl: c.TrustTTL, bits: c.TrustPrefix,
		link: c.LinkTTL, lim: c.Limiter, now: c.Now, log: c.Log}
	if s.issuer == "" {
		s.issuer = DefaultIssuer
	}
	if s.ttl <= 0 {
		s.ttl = DefaultTrustTTL
	}
	if s.bits.IPv4 == 0 {
		s.bits.IPv4 = DefaultTrustPrefix.IPv4
	}
	if s.bits.IPv6 == 0 {
		s.bits.IPv6 = DefaultTrustPrefix.IPv6
	}
	if s.bits.IPv4 < 8 || s.bits.IPv4 > 32 || s.bits.IPv6 < 16 || s.bits.IPv6 > 128 {
		return nil, fmt.Errorf("totp: trust prefix /%d, /%d out of range", s.bits.IPv4, s.bits.IPv6)
	}
	if s.link <= 0 {
		s.link = DefaultLinkTTL
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if err := s.checkKey(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Enrolled reports how many users are enrolled in st: a key file may only
// be created when none is (LoadKey's create).
func Enrolled(ctx context.Context, st store.TOTPStore) (int, error) {
	es, err := st.Enrolments(ctx)
	if err != nil {
		return 0, fmt.Errorf("totp: %w", err)
	}
	return len(es), nil
}

func (s *Service) checkKey(ctx context.Context) error {
	es, err := s.st.Enrolments(ctx)
	if err != nil {
		return fmt.Errorf("totp: checking the key: %w", err)
	}
	if len(es) == 0 {
		return nil
	}
	e, err := s.st.Enrolment(ctx, es[0].User)
	if err != nil {
		return fmt.Errorf("totp: checking the key: %w", err)
	}
	if _, err := s.seal.open(e.User, e.Secret); err != nil {
		return fmt.Errorf("totp: %w", err)
	}
	return nil
}

// norm is the form of a login every TOTP record is kept under (guard's).
func norm(user string) string { return guard.NormUser(user) }

// PrefixOf returns the trust prefix of a client address (IPv4 /24, IPv6 /56
// by default): what an approval covers.
func (s *Service) PrefixOf(a netip.Addr) netip.Prefix { return s.bits.Of(a) }

// Of returns the trust prefix of a: its IPv4 or IPv6 prefix of p's length
// (a zero field: DefaultTrustPrefix's). guard is given it before the
// Service exists (the Service needs guard's totp jail).
func (p Prefixes) Of(a netip.Addr) netip.Prefix {
	a = guard.Canon(a)
	bits := cmp.Or(p.IPv6, DefaultTrustPrefix.IPv6)
	if a.Is4() {
		bits = cmp.Or(p.IPv4, DefaultTrustPrefix.IPv4)
	}
	pr, _ := a.Prefix(bits)
	return pr
}

// TrustPrefixOf turns an address or prefix typed by an administrator into a
// trust prefix: an address becomes its PrefixOf; a prefix must have the
// trust prefix length (anything else would never match a login).
func (s *Service) TrustPrefixOf(target string) (netip.Prefix, error) {
	target = strings.TrimSpace(target)
	if a, err := netip.ParseAddr(target); err == nil {
		return s.PrefixOf(a), nil
	}
	p, err := netip.ParsePrefix(target)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: %q is neither an address nor a prefix", ErrPrefix, target)
	}
	a := guard.Canon(p.Addr())
	bits := p.Bits()
	if p.Addr().Is4In6() {
		bits -= 96
	}
	want := s.bits.IPv6
	if a.Is4() {
		want = s.bits.IPv4
	}
	if bits != want {
		return netip.Prefix{}, fmt.Errorf("%w: %s: approvals cover /%d (totp.trust_prefix)", ErrPrefix, target, want)
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}

// step is the time step of t.
func step(t time.Time) int64 { return t.Unix() / Period }

// match returns the step within Skew of now whose code is code, comparing
// in constant time; ok is false when none is.
func match(secret []byte, code string, now time.Time) (st int64, ok bool) {
	if len(code) != Digits {
		return 0, false
	}
	b32 := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(secret)
	cur := step(now)
	for d := int64(-Skew); d <= Skew; d++ {
		c, err := ptotp.GenerateCodeCustom(b32, time.Unix((cur+d)*Period, 0), ptotp.ValidateOpts{
			Period: Period, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
		if err != nil {
			continue
		}
		if subtle.ConstantTimeCompare([]byte(c), []byte(code)) == 1 {
			st, ok = cur+d, true
		}
	}
	return st, ok
}

// cleanCode drops the spaces and dashes people type in codes ("123 456").
func cleanCode(code string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '-' || r == '\t' {
			return -1
		}
		return r
	}, code)
}

// admit asks the totp jail whether codes of user from a are refused.
func (s *Service) admit(ctx context.Context, a netip.Addr, user string) error {
	if s.lim == nil {
		return nil
	}
	refused, err := s.lim.CodeRefused(ctx, a, user)
	if err != nil {
		return fmt.Errorf("totp: %w", err)
	}
	if refused {
		return ErrRefused
	}
	return nil
}

// failed counts a wrong code and returns why.
func (s *Service) failed(ctx context.Context, a netip.Addr, user string, why error) error {
	if s.lim != nil {
		if err := s.lim.CodeFailed(ctx, a, user); err != nil {
			return errors.Join(why, fmt.Errorf("totp: %w", err))
		}
	}
	return why
}

// Verify checks a code of user typed from a (invalid: the CLI), counts it
// and accepts it once: ErrRefused while the totp jail refuses the user or
// the client, ErrNotEnrolled, ErrWrongCode, ErrReplay for a code (or an
// older one) already used; each but ErrRefused counts as a wrong code.
func (s *Service) Verify(ctx context.Context, user, code string, from netip.Addr) error {
	user = norm(user)
	if user == "" {
		return ErrNotEnrolled
	}
	if err := s.admit(ctx, from, user); err != nil {
		return err
	}
	e, err := s.st.Enrolment(ctx, user)
	if errors.Is(err, store.ErrNotFound) {
		return s.failed(ctx, from, user, ErrNotEnrolled)
	}
	if err != nil {
		return fmt.Errorf("totp: %w", err)
	}
	secret, err := s.seal.open(user, e.Secret)
	if err != nil {
		return fmt.Errorf("totp: %w", err)
	}
	st, ok := match(secret, cleanCode(code), s.now())
	if !ok {
		return s.failed(ctx, from, user, ErrWrongCode)
	}
	fresh, err := s.st.UseStep(ctx, user, st)
	if errors.Is(err, store.ErrNotFound) {
		return s.failed(ctx, from, user, ErrNotEnrolled) // disabled meanwhile
	}
	if err != nil {
		return fmt.Errorf("totp: %w", err)
	}
	if !fresh {
		return s.failed(ctx, from, user, ErrReplay)
	}
	return nil
}

// Pending lists user's pending logins, the last refused first.
func (s *Service) Pending(ctx context.Context, user string) ([]Pending, error) {
	ps, err := s.st.Pending(ctx, norm(user))
	if err != nil {
		return nil, fmt.Errorf("totp: %w", err)
	}
	return ps, nil
}

// Trust approves prefix p (a trust prefix, see PrefixOf and TrustPrefixOf)
// for user for ttl (zero: TrustTTL), and drops the pending logins it
// covers. ErrNotEnrolled if user is not enrolled.
func (s *Service) Trust(ctx context.Context, user string, p netip.Prefix, ttl time.Duration) error {
	user = norm(user)
	if !p.IsValid() {
		return fmt.Errorf("%w: none given", ErrPrefix)
	}
	if ttl <= 0 {
		ttl = s.ttl
	}
	if _, err := s.st.Enrolment(ctx, user); errors.Is(err, store.ErrNotFound) {
		return ErrNotEnrolled
	} else if err != nil {
		return fmt.Errorf("totp: %w", err)
	}
	now := s.now()
	p = p.Masked()
	if err := s.st.Approve(ctx, store.Approval{User: user, Prefix: p, Created: now, Expires: now.Add(ttl)}); err != nil {
		return fmt.Errorf("totp: %w", err)
	}
	if err := s.st.Forget(ctx, user, []netip.Prefix{p}); err != nil {
		return fmt.Errorf("totp: %w", err)
	}
	s.log.Info("totp approval", "prefix", p, "ttl", ttl)
	return nil
}

// Untrust removes user's approval of p, or all of user's approvals when p
// is not valid, and returns how many it removed.
func (s *Service) Untrust(ctx context.Context, user string, p netip.Prefix) (int, error) {
	n, err := s.st.Revoke(ctx, norm(user), p)
	if err != nil {
		return 0, fmt.Errorf("totp: %w", err)
	}
	return n, nil
}

// Approvals lists user's active approvals (everyone's when user is empty).
func (s *Service) Approvals(ctx context.Context, user string) ([]Approval, error) {
	if user != "" {
		user = norm(user)
	}
	as, err := s.st.Approvals(ctx, user)
	if err != nil {
		return nil, fmt.Errorf("totp: %w", err)
	}
	return as, nil
}

// Enrolment is what Enrol returns: the otpauth:// URL holds the secret, for
// the user's eyes only (a QR code, a terminal), never a log.
type Enrolment struct {
	User string
	URL  string
}

// Enrol gives user a new secret, at once: their logins from unapproved
// prefixes are refused from now on. It replaces an existing enrolment.
func (s *Service) Enrol(ctx context.Context, user string) (Enrolment, error) {
	user = norm(user)
	if user == "" {
		return Enrolment{}, errors.New("totp: enrol: empty login")
	}
	secret := newSecret()
	u, err := s.url(user, secret)
	if err != nil {
		return Enrolment{}, err
	}
	if err := s.st.Enrol(ctx, store.Enrolment{User: user, Secret: s.seal.seal(user, secret), Created: s.now(),
		LastStep: step(s.now()) - Skew - 1}); err != nil {
		return Enrolment{}, fmt.Errorf("totp: %w", err)
	}
	s.log.Info("totp enrolment", "how", "cli")
	return Enrolment{User: user, URL: u}, nil
}

// Disable removes user's enrolment, approvals and pending logins, and
// reports whether user was enrolled.
func (s *Service) Disable(ctx context.Context, user string) (bool, error) {
	was, err := s.st.Disenrol(ctx, norm(user))
	if err != nil {
		return false, fmt.Errorf("totp: %w", err)
	}
	return was, nil
}

// Entry is one enrolled user, for listings.
type Entry struct {
	User      string
	Created   time.Time
	Approvals int
}

// List returns the enrolled users with their active approvals' count.
func (s *Service) List(ctx context.Context) ([]Entry, error) {
	es, err := s.st.Enrolments(ctx)
	if err != nil {
		return nil, fmt.Errorf("totp: %w", err)
	}
	as, err := s.st.Approvals(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("totp: %w", err)
	}
	n := map[string]int{}
	for _, a := range as {
		n[a.User]++
	}
	out := make([]Entry, len(es))
	for i, e := range es {
		out[i] = Entry{User: e.User, Created: e.Created, Approvals: n[e.User]}
	}
	return out, nil
}

// Counts returns how many users are enrolled and how many approvals of
// enrolled users are active, for status.
func (s *Service) Counts(ctx context.Context) (enrolled, approvals int, err error) {
	l, err := s.List(ctx)
	for _, e := range l {
		approvals += e.Approvals
	}
	return len(l), approvals, err
}

// NewEnrolLink makes a one-time enrolment link token for user, valid for
// LinkTTL: the page it opens shows a new secret, which counts only once a
// first code confirms it (ConfirmEnrolment). The store keeps a hash of the
// token, never the token.
func (s *Service) NewEnrolLink(ctx context.Context, user string) (string, error) {
	user = norm(user)
	if user == "" {
		return "", errors.New("totp: enrolment link: empty login")
	}
	raw := make([]byte, 24)
	rand.Read(raw)
	token := base64.RawURLEncoding.EncodeToString(raw)
	err := s.st.PutToken(ctx, tokenID(token), store.Token{User: user, Secret: s.seal.seal(user, newSecret()),
		Expires: s.now().Add(s.link)})
	if err != nil {
		return "", fmt.Errorf("totp: %w", err)
	}
	s.log.Info("totp enrolment link", "ttl", s.link)
	return token, nil
}

func tokenID(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Enrolment returns the user and the otpauth:// URL of an enrolment link,
// or ErrNoLink.
func (s *Service) Enrolment(ctx context.Context, token string) (user, otpauthURL string, err error) {
	t, secret, err := s.token(ctx, token, false)
	if err != nil {
		return "", "", err
	}
	u, err := s.url(t.User, secret)
	return t.User, u, err
}

func (s *Service) token(ctx context.Context, token string, remove bool) (store.Token, []byte, error) {
	if token == "" || len(token) > 128 {
		return store.Token{}, nil, ErrNoLink
	}
	t, err := s.st.TakeToken(ctx, tokenID(token), remove)
	if errors.Is(err, store.ErrNotFound) {
		return store.Token{}, nil, ErrNoLink
	}
	if err != nil {
		return store.Token{}, nil, fmt.Errorf("totp: %w", err)
	}
	secret, err := s.seal.open(t.User, t.Secret)
	if err != nil {
		return store.Token{}, nil, fmt.Errorf("totp: %w", err)
	}
	return t, secret, nil
}

// ConfirmEnrolment enrols the user of an enrolment link once code, typed
// from a, is right for its secret; the link is used up then. A wrong code is
// counted (ErrWrongCode) and leaves the link as it was.
func (s *Service) ConfirmEnrolment(ctx context.Context, token, code string, from netip.Addr) error {
	t, secret, err := s.token(ctx, token, false)
	if err != nil {
		return err
	}
	if err := s.admit(ctx, from, t.User); err != nil {
		return err
	}
	st, ok := match(secret, cleanCode(code), s.now())
	if !ok {
		return s.failed(ctx, from, t.User, ErrWrongCode)
	}
	if _, _, err := s.token(ctx, token, true); err != nil {
		return err // used by a concurrent confirmation
	}
	if err := s.st.Enrol(ctx, store.Enrolment{User: t.User, Secret: t.Secret, Created: s.now(), LastStep: st}); err != nil {
		return fmt.Errorf("totp: %w", err)
	}
	s.log.Info("totp enrolment", "how", "link")
	return nil
}

func newSecret() []byte {
	b := make([]byte, secretSize)
	rand.Read(b)
	return b
}

// url is the otpauth:// URL of user's secret.
func (s *Service) url(user string, secret []byte) (string, error) {
	k, err := ptotp.Generate(ptotp.GenerateOpts{Issuer: s.issuer, AccountName: user, Secret: secret,
		Period: Period, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		return "", fmt.Errorf("totp: otpauth URL: %w", err)
	}
	return k.URL(), nil
}

// Code returns the code of an otpauth:// URL at t, as an authenticator app
// shows it (tests and the CLI's self-check use it).
func Code(otpauthURL string, t time.Time) (string, error) {
	k, err := otp.NewKeyFromURL(otpauthURL)
	if err != nil {
		return "", fmt.Errorf("totp: otpauth URL: %w", err)
	}
	return ptotp.GenerateCodeCustom(k.Secret(), t, ptotp.ValidateOpts{Period: Period, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
}
