package memstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailguard/mailguard/store"
)

// The TOTP state (store.TOTPStore) lives under one lock: it changes at human
// speed (enrolments, approvals, a refused login of an enrolled user), and
// the request path only reads it, in Check. Every change is one journal
// record (op "totp") applied by the same function that replays it, so what
// survives a restart is exactly what was acknowledged.
type totpState struct {
	mu     sync.RWMutex
	users  map[string]*totpUser
	tokens map[string]tokenEntry
	// enrolled counts the enrolments, so that Check of a site where nobody
	// enrolled takes no lock at all.
	enrolled atomic.Int64
}

type totpUser struct {
	enrol     *store.Enrolment
	approvals map[netip.Prefix]store.Approval
	pending   []pendingEntry // the last added first
}

type pendingEntry struct {
	store.Pending
	exp int64 // unix nanoseconds
}

type tokenEntry struct {
	store.Token
}

// totpRecord is one change of the TOTP state, in the journal and the
// snapshot. Times are unix nanoseconds.
type totpRecord struct {
	Kind     string `json:"kind"`
	User     string `json:"user,omitempty"`
	Secret   []byte `json:"secret,omitempty"` // sealed by totp
	Created  int64  `json:"created,omitempty"`
	Step     int64  `json:"step,omitempty"`
	Prefix   string `json:"prefix,omitempty"`
	Addr     string `json:"addr,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	Expires  int64  `json:"expires,omitempty"`
	ID       string `json:"id,omitempty"` // token id
}

const (
	totpEnrol    = "enrol"
	totpDisenrol = "disenrol"
	totpStep     = "step"
	totpApprove  = "approve"
	totpRevoke   = "revoke" // Prefix empty: every approval
	totpPending  = "pending"
	totpForget   = "forget"
	totpToken    = "token"
	totpUntoken  = "untoken"
)

func (r *totpRecord) check() error {
	switch r.Kind {
	case totpEnrol, totpDisenrol, totpStep, totpApprove, totpRevoke, totpPending, totpForget:
		if r.User == "" {
			return fmt.Errorf("totp %s record without user", r.Kind)
		}
	case totpToken, totpUntoken:
		if r.ID == "" {
			return fmt.Errorf("totp %s record without id", r.Kind)
		}
	default:
		return fmt.Errorf("unknown totp record kind %q", r.Kind)
	}
	switch r.Kind {
	case totpApprove, totpPending, totpForget:
		if _, err := netip.ParsePrefix(r.Prefix); err != nil {
			return fmt.Errorf("totp %s record: %w", r.Kind, err)
		}
	}
	return nil
}

func (t *totpState) user(u string) *totpUser {
	if t.users == nil {
		t.users = make(map[string]*totpUser)
	}
	tu := t.users[u]
	if tu == nil {
		tu = &totpUser{approvals: make(map[netip.Prefix]store.Approval)}
		t.users[u] = tu
	}
	return tu
}

// apply makes one checked record part of the state. The caller holds t.mu
// (or runs before the store is shared).
func (t *totpState) apply(r *totpRecord) {
	switch r.Kind {
	case totpEnrol:
		tu := t.user(r.User)
		if tu.enrol == nil {
			t.enrolled.Add(1)
		}
		tu.enrol = &store.Enrolment{User: r.User, Secret: r.Secret, Created: time.Unix(0, r.Created), LastStep: r.Step}
	case totpDisenrol:
		if tu := t.users[r.User]; tu != nil && tu.enrol != nil {
			t.enrolled.Add(-1)
		}
		delete(t.users, r.User)
	case totpStep:
		if tu := t.users[r.User]; tu != nil && tu.enrol != nil && r.Step > tu.enrol.LastStep {
			tu.enrol.LastStep = r.Step
		}
	case totpApprove:
		p := netip.MustParsePrefix(r.Prefix)
		t.user(r.User).approvals[p] = store.Approval{User: r.User, Prefix: p,
			Created: time.Unix(0, r.Created), Expires: time.Unix(0, r.Expires)}
	case totpRevoke:
		if tu := t.users[r.User]; tu != nil {
			if r.Prefix == "" {
				clear(tu.approvals)
			} else {
				delete(tu.approvals, netip.MustParsePrefix(r.Prefix))
			}
		}
	case totpPending:
		p := store.Pending{User: r.User, Prefix: netip.MustParsePrefix(r.Prefix), Protocol: r.Protocol, At: time.Unix(0, r.Created)}
		p.Addr, _ = netip.ParseAddr(r.Addr)
		tu := t.user(r.User)
		tu.pending = slices.DeleteFunc(tu.pending, func(e pendingEntry) bool {
			return e.Prefix == p.Prefix && e.Protocol == p.Protocol
		})
		tu.pending = slices.Insert(tu.pending, 0, pendingEntry{p, r.Expires})
		if len(tu.pending) > store.MaxPending {
			tu.pending = tu.pending[:store.MaxPending]
		}
	case totpForget:
		if tu := t.users[r.User]; tu != nil {
			p := netip.MustParsePrefix(r.Prefix)
			tu.pending = slices.DeleteFunc(tu.pending, func(e pendingEntry) bool { return e.Prefix == p })
		}
	case totpToken:
		if t.tokens == nil {
			t.tokens = make(map[string]tokenEntry)
		}
		t.tokens[r.ID] = tokenEntry{store.Token{User: r.User, Secret: r.Secret, Expires: time.Unix(0, r.Expires)}}
	case totpUntoken:
		delete(t.tokens, r.ID)
	}
}

// sweep frees what has expired. The caller holds t.mu.
func (t *totpState) sweep(n int64) {
	for u, tu := range t.users {
		for p, a := range tu.approvals {
			if nanos(a.Expires) <= n {
				delete(tu.approvals, p)
			}
		}
		tu.pending = slices.DeleteFunc(tu.pending, func(e pendingEntry) bool { return e.exp <= n })
		if tu.enrol == nil && len(tu.approvals) == 0 && len(tu.pending) == 0 {
			delete(t.users, u)
		}
	}
	for id, tk := range t.tokens {
		if nanos(tk.Expires) <= n {
			delete(t.tokens, id)
		}
	}
}

// capture returns the live state as records, for a snapshot.
func (t *totpState) capture(n int64) []totpRecord {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := []totpRecord{}
	for u, tu := range t.users {
		if e := tu.enrol; e != nil {
			out = append(out, totpRecord{Kind: totpEnrol, User: u, Secret: e.Secret, Created: nanos(e.Created), Step: e.LastStep})
		}
		for p, a := range tu.approvals {
			if nanos(a.Expires) > n {
				out = append(out, totpRecord{Kind: totpApprove, User: u, Prefix: p.String(), Created: nanos(a.Created), Expires: nanos(a.Expires)})
			}
		}
		for i := len(tu.pending) - 1; i >= 0; i-- { // oldest first, as they were added
			e := tu.pending[i]
			if e.exp > n {
				out = append(out, pendingRecord(e.Pending, e.exp))
			}
		}
	}
	for id, tk := range t.tokens {
		if nanos(tk.Expires) > n {
			out = append(out, totpRecord{Kind: totpToken, ID: id, User: tk.User, Secret: tk.Secret, Expires: nanos(tk.Expires)})
		}
	}
	return out
}

func pendingRecord(p store.Pending, exp int64) totpRecord {
	r := totpRecord{Kind: totpPending, User: p.User, Prefix: p.Prefix.String(), Protocol: p.Protocol, Created: nanos(p.At), Expires: exp}
	if p.Addr.IsValid() {
		r.Addr = p.Addr.String()
	}
	return r
}

// change journals r and applies it. The caller holds s.totp.mu.
func (s *Store) totpChange(r totpRecord) error {
	if s.j != nil {
		if err := s.j.write(record{Op: opTOTP, TOTP: &r}); err != nil {
			return fmt.Errorf("memstore: totp %s: %w", r.Kind, err)
		}
	}
	s.totp.apply(&r)
	return nil
}

// checkTOTP fills a.TOTP for Check.
func (s *Store) checkTOTP(q store.Query, n int64, a *store.Answer) {
	if s.totp.enrolled.Load() == 0 {
		return
	}
	s.totp.mu.RLock()
	defer s.totp.mu.RUnlock()
	tu := s.totp.users[q.TOTPUser]
	if tu == nil || tu.enrol == nil {
		return
	}
	a.TOTP.Enrolled = true
	ap, ok := tu.approvals[q.TOTPPrefix.Masked()]
	a.TOTP.Approved = ok && nanos(ap.Expires) > n
}

func (s *Store) totpLock() (func(), error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	s.totp.mu.Lock()
	return s.totp.mu.Unlock, nil
}

func (s *Store) totpRLock() (func(), error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	s.totp.mu.RLock()
	return s.totp.mu.RUnlock, nil
}

// Enrol stores e, replacing any enrolment of e.User.
func (s *Store) Enrol(_ context.Context, e store.Enrolment) error {
	if e.User == "" || len(e.Secret) == 0 {
		return errors.New("memstore: enrol: a user and a secret are required")
	}
	unlock, err := s.totpLock()
	if err != nil {
		return err
	}
	defer unlock()
	if e.Created.IsZero() {
		e.Created = s.now()
	}
	return s.totpChange(totpRecord{Kind: totpEnrol, User: e.User, Secret: e.Secret, Created: nanos(e.Created), Step: e.LastStep})
}

// Enrolment returns user's enrolment.
func (s *Store) Enrolment(_ context.Context, user string) (store.Enrolment, error) {
	unlock, err := s.totpRLock()
	if err != nil {
		return store.Enrolment{}, err
	}
	defer unlock()
	tu := s.totp.users[user]
	if tu == nil || tu.enrol == nil {
		return store.Enrolment{}, store.ErrNotFound
	}
	e := *tu.enrol
	e.Secret = slices.Clone(e.Secret)
	return e, nil
}

// Enrolments lists the enrolments, by user, without secrets.
func (s *Store) Enrolments(_ context.Context) ([]store.Enrolment, error) {
	unlock, err := s.totpRLock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	out := []store.Enrolment{}
	for _, tu := range s.totp.users {
		if tu.enrol != nil {
			e := *tu.enrol
			e.Secret = nil
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b store.Enrolment) int { return cmp.Compare(a.User, b.User) })
	return out, nil
}

// Disenrol removes user's enrolment, approvals and pending logins.
func (s *Store) Disenrol(_ context.Context, user string) (bool, error) {
	unlock, err := s.totpLock()
	if err != nil {
		return false, err
	}
	defer unlock()
	tu := s.totp.users[user]
	if tu == nil {
		return false, nil
	}
	was := tu.enrol != nil
	return was, s.totpChange(totpRecord{Kind: totpDisenrol, User: user})
}

// UseStep records step as user's last used step if it is after the stored one.
func (s *Store) UseStep(_ context.Context, user string, step int64) (bool, error) {
	unlock, err := s.totpLock()
	if err != nil {
		return false, err
	}
	defer unlock()
	tu := s.totp.users[user]
	if tu == nil || tu.enrol == nil {
		return false, store.ErrNotFound
	}
	if step <= tu.enrol.LastStep {
		return false, nil
	}
	return true, s.totpChange(totpRecord{Kind: totpStep, User: user, Step: step})
}

// Approve stores an approval.
func (s *Store) Approve(_ context.Context, a store.Approval) error {
	if a.User == "" || !a.Prefix.IsValid() {
		return errors.New("memstore: approve: a user and a prefix are required")
	}
	unlock, err := s.totpLock()
	if err != nil {
		return err
	}
	defer unlock()
	if a.Created.IsZero() {
		a.Created = s.now()
	}
	if !a.Expires.After(a.Created) {
		return fmt.Errorf("memstore: approve %s: expires is not after created", a.Prefix)
	}
	return s.totpChange(totpRecord{Kind: totpApprove, User: a.User, Prefix: a.Prefix.Masked().String(),
		Created: nanos(a.Created), Expires: nanos(a.Expires)})
}

// Revoke removes user's approval of p, or all of them.
func (s *Store) Revoke(_ context.Context, user string, p netip.Prefix) (int, error) {
	unlock, err := s.totpLock()
	if err != nil {
		return 0, err
	}
	defer unlock()
	tu := s.totp.users[user]
	if tu == nil {
		return 0, nil
	}
	n := nanos(s.now())
	removed := 0
	r := totpRecord{Kind: totpRevoke, User: user}
	if p.IsValid() {
		p = p.Masked()
		r.Prefix = p.String()
		if a, ok := tu.approvals[p]; ok && nanos(a.Expires) > n {
			removed = 1
		}
	} else {
		for _, a := range tu.approvals {
			if nanos(a.Expires) > n {
				removed++
			}
		}
	}
	if removed == 0 {
		return 0, nil
	}
	return removed, s.totpChange(r)
}

// Approvals lists active approvals of user, or everyone's.
func (s *Store) Approvals(_ context.Context, user string) ([]store.Approval, error) {
	unlock, err := s.totpRLock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	n := nanos(s.now())
	out := []store.Approval{}
	for u, tu := range s.totp.users {
		if user != "" && u != user {
			continue
		}
		for _, a := range tu.approvals {
			if nanos(a.Expires) > n {
				out = append(out, a)
			}
		}
	}
	slices.SortFunc(out, func(a, b store.Approval) int {
		if c := cmp.Compare(a.User, b.User); c != 0 {
			return c
		}
		return a.Prefix.Addr().Compare(b.Prefix.Addr())
	})
	return out, nil
}

// AddPending keeps a refused login for ttl.
func (s *Store) AddPending(_ context.Context, p store.Pending, ttl time.Duration) error {
	if p.User == "" || !p.Prefix.IsValid() || ttl <= 0 {
		return errors.New("memstore: add pending: a user, a prefix and a positive ttl are required")
	}
	unlock, err := s.totpLock()
	if err != nil {
		return err
	}
	defer unlock()
	if p.At.IsZero() {
		p.At = s.now()
	}
	p.Prefix = p.Prefix.Masked()
	return s.totpChange(pendingRecord(p, nanos(p.At.Add(ttl))))
}

// Pending lists user's live pending logins, newest first.
func (s *Store) Pending(_ context.Context, user string) ([]store.Pending, error) {
	unlock, err := s.totpRLock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	n := nanos(s.now())
	out := []store.Pending{}
	if tu := s.totp.users[user]; tu != nil {
		for _, e := range tu.pending {
			if e.exp > n {
				out = append(out, e.Pending)
			}
		}
	}
	return out, nil
}

// Forget removes user's pending logins from the prefixes ps.
func (s *Store) Forget(_ context.Context, user string, ps []netip.Prefix) error {
	unlock, err := s.totpLock()
	if err != nil {
		return err
	}
	defer unlock()
	if s.totp.users[user] == nil {
		return nil
	}
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		if err := s.totpChange(totpRecord{Kind: totpForget, User: user, Prefix: p.Masked().String()}); err != nil {
			return err
		}
	}
	return nil
}

// PutToken stores an enrolment link.
func (s *Store) PutToken(_ context.Context, id string, t store.Token) error {
	if id == "" || t.User == "" {
		return errors.New("memstore: put token: an id and a user are required")
	}
	unlock, err := s.totpLock()
	if err != nil {
		return err
	}
	defer unlock()
	return s.totpChange(totpRecord{Kind: totpToken, ID: id, User: t.User, Secret: t.Secret, Expires: nanos(t.Expires)})
}

// TakeToken returns (and with remove deletes) the token under id.
func (s *Store) TakeToken(_ context.Context, id string, remove bool) (store.Token, error) {
	unlock, err := s.totpLock()
	if err != nil {
		return store.Token{}, err
	}
	defer unlock()
	tk, ok := s.totp.tokens[id]
	if !ok || nanos(tk.Expires) <= nanos(s.now()) {
		return store.Token{}, store.ErrNotFound
	}
	if remove {
		if err := s.totpChange(totpRecord{Kind: totpUntoken, ID: id}); err != nil {
			return store.Token{}, err
		}
	}
	t := tk.Token
	t.Secret = slices.Clone(t.Secret)
	return t, nil
}

var _ store.TOTPStore = (*Store)(nil)
