package redisstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/mailguard/mailguard/store"
)

// Check answers q with one EVALSHA.
func (s *Store) Check(ctx context.Context, q store.Query) (store.Answer, error) {
	if s.closed.Load() {
		return store.Answer{}, store.ErrClosed
	}
	var ans store.Answer
	if len(q.Subjects) == 0 && q.Known == "" && len(q.Counts) == 0 && q.TOTPUser == "" {
		return ans, nil
	}
	now := s.now()
	c := newCall()
	defer c.release()
	for _, sub := range q.Subjects {
		c.keyBuf = s.k.appendBan(c.keyBuf, sub)
		c.key()
	}
	known := "0"
	if q.Known != "" {
		c.keyBuf = s.k.appendKnown(c.keyBuf, q.Known)
		c.key()
		known = "1"
	}
	totpPrefix := ""
	if q.TOTPUser != "" {
		c.keyBuf = append(c.keyBuf, s.k.enrol(q.TOTPUser)...)
		c.key()
		c.keyBuf = append(c.keyBuf, s.k.approvals(q.TOTPUser)...)
		c.key()
		totpPrefix = q.TOTPPrefix.Masked().String()
	}
	for _, w := range q.Counts {
		if w.Span <= 0 {
			return ans, fmt.Errorf("redisstore: check: window %s %s: span must be positive", w.Jail, w.Subject)
		}
		c.keyBuf = s.k.appendWindow(c.keyBuf, w.Jail, w.Subject)
		c.key()
	}
	c.eval(checkScript)
	c.int(micros(now))
	c.int(int64(len(q.Subjects)))
	c.str(known)
	c.str(totpPrefix)
	for _, w := range q.Counts {
		c.int(durMicros(w.Span))
		c.str(w.Subject)
	}
	cmd, err := s.b.run(ctx, c)
	if err != nil {
		return ans, s.fail("check", err)
	}
	v, err := cmd.Slice()
	if err != nil {
		return ans, s.fail("check", err)
	}
	r := reply(v)
	nb := r.int()
	for range nb {
		i, jail, rec := r.int(), r.str(), r.str()
		if i < 1 || i > len(q.Subjects) {
			r.err = fmt.Errorf("subject index %d out of range", i)
			break
		}
		b, err := decodeBan(jail, q.Subjects[i-1], rec)
		if err != nil {
			r.err = err
			break
		}
		if b.Expires.After(now) {
			ans.Bans = append(ans.Bans, b)
		}
	}
	ans.Known = r.int() == 1
	ans.TOTP.Enrolled = r.int() == 1
	ans.TOTP.Approved = r.int() == 1
	if len(q.Counts) > 0 {
		ans.Counts = make([]int, len(q.Counts))
		for i := range ans.Counts {
			ans.Counts[i] = r.int()
		}
	}
	if r.err != nil {
		return store.Answer{}, s.fail("check", r.err)
	}
	return ans, nil
}

// Hit records a failure and bans at the threshold: one EVALSHA (of
// settleScript for a Settle Hit).
func (s *Store) Hit(ctx context.Context, h store.Hit) (store.HitResult, error) {
	if s.closed.Load() {
		return store.HitResult{}, store.ErrClosed
	}
	if h.Jail == "" || h.Subject == "" || h.MaxRetry <= 0 || h.Span <= 0 {
		return store.HitResult{}, fmt.Errorf("redisstore: hit %s %s: need a jail, a subject, maxretry > 0 and span > 0", h.Jail, h.Subject)
	}
	now := s.now()
	rwin := h.Recidive.Window
	if rwin < 0 {
		rwin = 0
	}
	c := newCall()
	defer c.release()
	c.keyBuf = s.k.appendWindow(c.keyBuf, h.Jail, h.Subject)
	c.key()
	c.keyBuf = s.k.appendBan(c.keyBuf, h.Subject)
	c.key()
	c.keyBuf = s.k.appendIndex(c.keyBuf, fnv32(h.Subject)%banShards)
	c.key()
	c.keyBuf = append(c.keyBuf, s.k.stats...)
	c.key()
	c.keyBuf = append(c.keyBuf, s.k.events...)
	c.key()
	if h.Settle {
		c.eval(settleScript)
	} else {
		c.eval(hitScript)
	}
	c.int(micros(now))
	c.int(now.UnixNano())
	c.int(durMicros(h.Span))
	c.int(int64(h.MaxRetry))
	c.str(member(h.Member))
	c.int(max(int64(h.BanTime), 0))
	c.int(durMicros(rwin))
	c.str(strconv.FormatFloat(h.Recidive.Factor, 'g', -1, 64))
	c.int(max(int64(h.Recidive.MaxTime), 0))
	c.str(h.Reason)
	c.str(h.Jail)
	c.str(h.Subject)
	c.str(s.node)
	c.int(slack.Milliseconds())
	c.int(streamMaxLen)
	c.int(streamTTL.Milliseconds())
	c.int(statsTTL.Milliseconds())
	c.int(historyMax)
	cmd, err := s.b.run(ctx, c)
	if err != nil {
		return store.HitResult{}, s.fail("hit "+h.Jail, err)
	}
	v, err := cmd.Slice()
	if err != nil {
		return store.HitResult{}, s.fail("hit "+h.Jail, err)
	}
	r := reply(v)
	res := store.HitResult{Count: r.int()}
	if len(v) > 1 {
		b, err := decodeBan(h.Jail, h.Subject, r.str())
		if err != nil {
			r.err = err
		}
		res.Ban = &b
	}
	if r.err != nil {
		return store.HitResult{}, s.fail("hit "+h.Jail, r.err)
	}
	return res, nil
}

// Ban places or replaces b: one EVALSHA.
func (s *Store) Ban(ctx context.Context, b store.Ban) (store.Ban, error) {
	if s.closed.Load() {
		return store.Ban{}, store.ErrClosed
	}
	now := s.now()
	if b.Created.IsZero() {
		b.Created = now
	}
	if b.Jail == "" || b.Subject == "" {
		return store.Ban{}, errors.New("redisstore: ban: need a jail and a subject")
	}
	if !b.Expires.After(now) || !b.Expires.After(b.Created) {
		return store.Ban{}, fmt.Errorf("redisstore: ban %s: expires %v, before now or its creation", b.Subject, b.Expires)
	}
	keys := []string{s.k.ban(b.Subject), s.k.index(b.Subject), s.k.stats, s.k.events}
	rec, err := banScript.Run(ctx, s.c, keys,
		micros(now), b.Jail, b.Subject, micros(b.Expires),
		strconv.FormatInt(b.Created.UnixNano(), 10), int64(b.Expires.Sub(b.Created)),
		b.Reason, s.node, slack.Milliseconds(), streamMaxLen, streamTTL.Milliseconds(),
		durMicros(defaultRecidiveWindow), historyMax, statsTTL.Milliseconds(),
	).Text()
	if err != nil {
		return store.Ban{}, s.fail("ban "+b.Jail, err)
	}
	nb, err := decodeBan(b.Jail, b.Subject, rec)
	if err != nil {
		return store.Ban{}, s.fail("ban "+b.Jail, err)
	}
	return nb, nil
}

// Unban lifts every jail's ban on subject: one EVALSHA.
func (s *Store) Unban(ctx context.Context, subject store.Subject) ([]store.Ban, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	now := s.now()
	v, err := unbanScript.Run(ctx, s.c, []string{s.k.ban(subject), s.k.index(subject), s.k.events, s.k.legacy},
		micros(now), subject, s.node, streamMaxLen, streamTTL.Milliseconds()).Slice()
	if err != nil {
		return nil, s.fail("unban", err)
	}
	lifted := []store.Ban{}
	r := reply(v)
	for len(r.v) > 0 && r.err == nil {
		jail, rec := r.str(), r.str()
		b, err := decodeBan(jail, subject, rec)
		if err != nil {
			r.err = err
			break
		}
		if b.Expires.After(now) {
			lifted = append(lifted, b)
		}
	}
	if r.err != nil {
		return nil, s.fail("unban", r.err)
	}
	return lifted, nil
}

// Bans lists the active bans: one EVALSHA per ~1,000 banned subjects (whole
// ban index shards), and one more per 1,000 subjects in the ban index of an
// earlier version, if Redis still has it. The pages are not one snapshot: a
// ban made or lifted while they are read may be missed (never listed twice),
// which Watch or the next reconcile repairs.
func (s *Store) Bans(ctx context.Context) ([]store.Ban, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	now := s.now()
	type id struct{ jail, subject string }
	seen := map[id]bool{}
	var bans []store.Ban
	// add reads (subject, jail, record) triples.
	add := func(r *replyReader) {
		for len(r.v) > 0 && r.err == nil {
			sub, jail, rec := r.str(), r.str(), r.str()
			b, err := decodeBan(jail, sub, rec)
			if err != nil {
				r.err = err
				return
			}
			if b.Expires.After(now) && !seen[id{jail, sub}] {
				seen[id{jail, sub}] = true
				bans = append(bans, b)
			}
		}
	}
	for next := 0; next < banShards; {
		v, err := bansScript.Run(ctx, s.c, []string{s.k.stats}, micros(now), next, banShards, bansPage, s.k.indexBase, s.k.banBase).Slice()
		if err != nil {
			return nil, s.fail("bans", err)
		}
		r := reply(v)
		n := r.int()
		add(r)
		if r.err == nil && n <= next {
			r.err = fmt.Errorf("bans script went from shard %d to %d", next, n)
		}
		if r.err != nil {
			return nil, s.fail("bans", r.err)
		}
		next = n
	}
	for off := 0; ; off += bansPage {
		v, err := legacyBansScript.Run(ctx, s.c, []string{s.k.legacy}, micros(now), off, bansPage, s.k.banBase).Slice()
		if err != nil {
			return nil, s.fail("bans", err)
		}
		r := reply(v)
		n := r.int()
		add(r)
		if r.err != nil {
			return nil, s.fail("bans", r.err)
		}
		if n < bansPage {
			return bans, nil
		}
	}
}

// Reset forgets the failures of subject in jail.
func (s *Store) Reset(ctx context.Context, jail string, subject store.Subject) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	c := newCall()
	defer c.release()
	c.keyBuf = s.k.appendWindow(c.keyBuf, jail, subject)
	c.key()
	c.eval(resetScript)
	c.str(subject)
	if _, err := s.b.run(ctx, c); err != nil {
		return s.fail("reset", err)
	}
	return nil
}

// Remember records key as a known device for ttl: one SET.
func (s *Store) Remember(ctx context.Context, key string, ttl time.Duration) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	if ttl <= 0 {
		return fmt.Errorf("redisstore: remember: ttl %v must be positive", ttl)
	}
	c := newCall()
	defer c.release()
	c.keyBuf = s.k.appendKnown(c.keyBuf, key)
	c.key()
	c.args = append(c.args, "set")
	c.keys()
	c.int(micros(s.now().Add(ttl)))
	c.args = append(c.args, "px")
	c.int((ttl + slack).Milliseconds())
	if _, err := s.b.run(ctx, c); err != nil {
		return s.fail("remember", err)
	}
	return nil
}

// Stats returns the counters of the named jails: one EVALSHA, then per jail
// one per page of window shards (failingPage) to count the failing subjects.
func (s *Store) Stats(ctx context.Context, jails []string) (map[string]store.JailStats, error) {
	if s.closed.Load() {
		return nil, store.ErrClosed
	}
	out := make(map[string]store.JailStats, len(jails))
	if len(jails) == 0 {
		return out, nil
	}
	args := make([]any, len(jails))
	for i, j := range jails {
		args[i] = j
	}
	v, err := statsScript.Run(ctx, s.c, []string{s.k.stats}, args...).Slice()
	if err != nil {
		return nil, s.fail("stats", err)
	}
	now := micros(s.now())
	r := reply(v)
	for _, j := range jails {
		span := r.int64()
		st := store.JailStats{TotalFailed: r.int64(), TotalBanned: r.int64()}
		for first := uint32(0); span > 0 && first < windowShards && r.err == nil; first += failingPage {
			a := []any{now, span}
			for n := first; n < first+failingPage && n < windowShards; n++ {
				a = append(a, s.k.shard(j, n))
			}
			n, err := failingScript.Run(ctx, s.c, []string{s.k.stats}, a...).Int()
			if err != nil {
				return nil, s.fail("stats", err)
			}
			st.Failing += n
		}
		out[j] = st
	}
	if r.err != nil {
		return nil, s.fail("stats", r.err)
	}
	return out, nil
}

// decodeBan parses a ban record (see scripts.go).
func decodeBan(jail, subject, rec string) (store.Ban, error) {
	f := strings.SplitN(rec, "|", 5)
	if len(f) != 5 {
		return store.Ban{}, fmt.Errorf("bad ban record %q", rec)
	}
	created, err1 := strconv.ParseInt(f[1], 10, 64)
	d, err2 := strconv.ParseInt(f[2], 10, 64)
	nth, err3 := strconv.Atoi(f[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return store.Ban{}, fmt.Errorf("bad ban record %q: %w", rec, err)
	}
	c := time.Unix(0, created).UTC()
	return store.Ban{
		Jail: jail, Subject: subject, Created: c, Expires: c.Add(time.Duration(d)),
		Nth: nth, Reason: f[4],
	}, nil
}

// micros is t in µs since the Unix epoch, rounded down; scripts compare
// times at this precision.
func micros(t time.Time) int64 { return t.UnixMicro() }

// durMicros is d in µs, rounded up so a window is never shorter than asked.
func durMicros(d time.Duration) int64 {
	return int64((d + time.Microsecond - 1) / time.Microsecond)
}

// replyReader walks a script's flat array reply, remembering the first
// malformed element.
type replyReader struct {
	v   []any
	err error
}

func reply(v []any) *replyReader { return &replyReader{v: v} }

func (r *replyReader) next() any {
	if len(r.v) == 0 {
		if r.err == nil {
			r.err = errors.New("short script reply")
		}
		return nil
	}
	x := r.v[0]
	r.v = r.v[1:]
	return x
}

func (r *replyReader) int64() int64 {
	switch x := r.next().(type) {
	case int64:
		return x
	case string:
		n, err := strconv.ParseInt(x, 10, 64)
		if err != nil && r.err == nil {
			r.err = fmt.Errorf("script reply: %w", err)
		}
		return n
	case nil:
		return 0
	default:
		if r.err == nil {
			r.err = fmt.Errorf("script reply: unexpected %T", x)
		}
		return 0
	}
}

func (r *replyReader) int() int { return int(r.int64()) }

func (r *replyReader) str() string {
	x := r.next()
	s, ok := x.(string)
	if !ok && x != nil && r.err == nil {
		r.err = fmt.Errorf("script reply: unexpected %T, want a string", x)
	}
	return s
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

// isNil reports a nil reply (XREAD timed out).
func isNil(err error) bool { return errors.Is(err, redis.Nil) }
