package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/escape"
	"github.com/mailguard/mailguard/store"
)

// explainGuard is the optional ability behind GET /explain (guard.Guard
// has it).
type explainGuard interface {
	Explain(ctx context.Context, target string) (guard.Explanation, error)
}

// Explanation is the reply of GET /explain: see guard.Explanation. Its
// JSON is what `mailguard explain --json` prints.
type Explanation struct {
	Target   string        `json:"target"`
	Kind     string        `json:"kind"`
	Event    *audit.Event  `json:"event,omitempty"`
	Subjects []string      `json:"subjects"`
	Events   []audit.Event `json:"events"`
	Bans     []Ban         `json:"bans"`
	Jails    []ExplainJail `json:"jails"`
	Recidive Recidive      `json:"recidive"`
	Ignored  bool          `json:"ignored"`
	Known    []string      `json:"known_devices"`
	Firewall KernelState   `json:"firewall"`
	Now      time.Time     `json:"now"`
}

// ExplainJail is a jail an explanation names.
type ExplainJail struct {
	Name     string `json:"name"`
	Key      string `json:"key"`
	MaxRetry int    `json:"maxretry"`
	FindTime string `json:"findtime"`
	BanTime  string `json:"bantime"`
	Action   string `json:"action"`
}

// Recidive is the escalation rule (recidive.*).
type Recidive struct {
	Window  string  `json:"window"`
	Factor  float64 `json:"factor"`
	MaxTime string  `json:"maxtime"`
}

// KernelState is what this node's kernel firewall holds on the target.
type KernelState struct {
	Backend string   `json:"backend"`
	Entries []string `json:"entries"`
	Error   string   `json:"error,omitempty"`
}

func (s *Server) explain(w http.ResponseWriter, r *http.Request) {
	eg, ok := s.Guard.(explainGuard)
	if !ok {
		fail(w, http.StatusNotFound, CodeNotFound, errors.New("explain: not available"))
		return
	}
	target := r.URL.Query().Get("target")
	x, err := eg.Explain(r.Context(), target)
	if errors.Is(err, guard.ErrNoAudit) {
		fail(w, http.StatusNotFound, CodeNotFound, fmt.Errorf("explain: %w (audit.enabled is false)", err))
		return
	}
	if err != nil {
		s.guardFailed(w, "explain", err)
		return
	}
	out := Explanation{Target: x.Target, Kind: x.Kind, Event: x.Event, Subjects: x.Subjects, Events: x.Events,
		Bans: []Ban{}, Jails: []ExplainJail{}, Ignored: x.Ignored, Known: x.Known, Now: s.clock().UTC(),
		Recidive: Recidive{Window: x.Recidive.Window.String(), Factor: x.Recidive.Factor, MaxTime: x.Recidive.MaxTime.String()}}
	if out.Events == nil {
		out.Events = []audit.Event{}
	}
	if out.Known == nil {
		out.Known = []string{}
	}
	for _, b := range x.Bans {
		out.Bans = append(out.Bans, toBan(b))
	}
	for _, j := range x.Jails {
		out.Jails = append(out.Jails, ExplainJail{Name: j.Name, Key: string(j.Key), MaxRetry: j.MaxRetry,
			FindTime: j.FindTime.String(), BanTime: j.BanTime.String(), Action: string(j.Action)})
	}
	out.Firewall = s.kernel(r.Context(), x.Subjects)
	reply(w, http.StatusOK, out)
}

// kernel lists the entries of this node's firewall that overlap subjects.
func (s *Server) kernel(ctx context.Context, subjects []string) KernelState {
	k := KernelState{Backend: s.FirewallBackend, Entries: []string{}}
	if k.Backend == "" {
		k.Backend = firewall.NameNone
	}
	if s.Kernel == nil || k.Backend == firewall.NameNone {
		return k
	}
	var nets []netip.Prefix
	for _, sub := range subjects {
		if p, err := netip.ParsePrefix(strings.TrimPrefix(sub, "net:")); err == nil && strings.HasPrefix(sub, "net:") {
			nets = append(nets, p)
		}
	}
	entries, err := s.Kernel(ctx)
	if err != nil {
		k.Error = err.Error()
		return k
	}
	for _, e := range entries {
		if slices.ContainsFunc(nets, func(p netip.Prefix) bool { return p.Overlaps(e.Prefix) }) {
			k.Entries = append(k.Entries, e.String())
		}
	}
	sort.Strings(k.Entries)
	return k
}

// Explain asks the daemon to explain target (an address, prefix, login or
// audit id).
func (c *Client) Explain(ctx context.Context, target string) (Explanation, error) {
	var out Explanation
	return out, c.do(ctx, http.MethodGet, "/explain?target="+url.QueryEscape(target), nil, &out)
}

// PrintExplain tells x in plain words. Every text an attacker may choose
// (logins, reasons, sources) is escaped.
func PrintExplain(w io.Writer, x Explanation) {
	e := escape.String
	fmt.Fprintf(w, "%s (%s)\n", e(x.Target), x.Kind)
	jails := map[string]ExplainJail{}
	for _, j := range x.Jails {
		jails[j.Name] = j
	}
	fmt.Fprintf(w, "In short: %s\n", summary(x))
	if x.Event != nil {
		fmt.Fprintf(w, "\nThe %s %s:\n  %s\n", x.Event.Kind, x.Event.ID, eventLine(*x.Event, jails, x.Recidive))
	}
	if x.Ignored {
		fmt.Fprintf(w, "\nIt is inside ignoreip: never counted, refused or banned.\n")
	}
	fmt.Fprintf(w, "\nWhat happened (oldest first; trails of %s):\n", e(strings.Join(x.Subjects, ", ")))
	if len(x.Events) == 0 {
		fmt.Fprintf(w, "  nothing in the audit trail\n")
	}
	failures, first, last := 0, time.Time{}, time.Time{}
	for _, ev := range x.Events {
		fmt.Fprintf(w, "  %s  %s\n", ev.Time.UTC().Format(time.RFC3339), eventLine(ev, jails, x.Recidive))
		if ev.Kind == audit.KindFailure {
			if failures == 0 {
				first = ev.Time
			}
			failures++
			last = ev.Time
		}
	}
	if failures > 0 {
		fmt.Fprintf(w, "  = %d failure(s) in %s\n", failures, last.Sub(first).Round(time.Second))
	}
	fmt.Fprintf(w, "\nBans in force:\n")
	if len(x.Bans) == 0 {
		fmt.Fprintf(w, "  none\n")
	}
	for _, b := range x.Bans {
		fmt.Fprintf(w, "  %s by jail %s, ban #%d for %s, %s left (%s)\n", e(Target(b.Subject)), e(b.Jail), b.Nth,
			short(b.Expires.Sub(b.Created).Round(time.Second).String()), short(b.Expires.Sub(x.Now).Round(time.Second).String()), e(b.Reason))
	}
	var spared []string
	for _, ev := range x.Events {
		if ev.Spared != "" {
			spared = append(spared, fmt.Sprintf("%s: %s reached maxretry, not banned: the %s rule (many users log in from this address)",
				ev.Time.UTC().Format(time.RFC3339), e(strings.Join(ev.Jails, ",")), e(ev.Spared)))
		}
	}
	for _, k := range x.Known {
		user, prefix, _ := strings.Cut(k, "|")
		spared = append(spared, fmt.Sprintf("%s logged in successfully from %s: a known device, never refused there by a ban on the user", e(user), e(prefix)))
	}
	if len(spared) > 0 {
		fmt.Fprintf(w, "\nSpared:\n")
		for _, s := range spared {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
	if len(x.Jails) > 0 {
		fmt.Fprintf(w, "\nJails:\n")
		for _, j := range x.Jails {
			fmt.Fprintf(w, "  %s: key %s, bans at %d failures within %s, bantime %s, action %s\n",
				e(j.Name), j.Key, j.MaxRetry, short(j.FindTime), short(j.BanTime), j.Action)
		}
		if x.Recidive.Factor > 1 {
			fmt.Fprintf(w, "  escalation: the k-th ban within %s lasts bantime × %g^(k−1), at most %s\n",
				short(x.Recidive.Window), x.Recidive.Factor, short(x.Recidive.MaxTime))
		}
	}
	fmt.Fprintf(w, "\nKernel firewall on this node (%s):\n", x.Firewall.Backend)
	switch {
	case x.Firewall.Error != "":
		fmt.Fprintf(w, "  cannot list: %s\n", e(x.Firewall.Error))
	case x.Firewall.Backend == firewall.NameNone:
		fmt.Fprintf(w, "  no kernel firewall (in-protocol refusal only)\n")
	case len(x.Firewall.Entries) == 0:
		fmt.Fprintf(w, "  nothing held\n")
	}
	for _, en := range x.Firewall.Entries {
		fmt.Fprintf(w, "  %s\n", e(en))
	}
}

// eventLine is one event in words.
func eventLine(ev audit.Event, jails map[string]ExplainJail, rc Recidive) string {
	e := escape.String
	var b strings.Builder
	from := e(ev.Source)
	if ev.Protocol != "" {
		from += "/" + e(ev.Protocol)
	}
	who := ""
	if ev.Addr != "" {
		who = " from " + e(ev.Addr)
	}
	if ev.User != "" {
		who += " as " + e(ev.User)
	}
	switch ev.Kind {
	case audit.KindFailure:
		fmt.Fprintf(&b, "failure (%s)%s via %s, counted by %s: %d in the window", e(ev.Event), who, from, e(strings.Join(ev.Jails, ",")), ev.Count)
	case audit.KindBan:
		j, ok := jails[ev.Jail]
		fmt.Fprintf(&b, "BAN %s by jail %s", e(Target(ev.Subject)), e(ev.Jail))
		if ok && ev.Source != "admin" {
			fmt.Fprintf(&b, ": %d failures within %s reached maxretry", j.MaxRetry, short(j.FindTime))
		} else if ev.Source == "admin" {
			b.WriteString(" by an administrator")
		}
		fmt.Fprintf(&b, "; ban #%d for %s", ev.Nth, e(short(ev.BanTime)))
		if ok && ev.Nth > 1 {
			base, _ := time.ParseDuration(j.BanTime)
			win, _ := time.ParseDuration(rc.Window)
			maxT, _ := time.ParseDuration(rc.MaxTime)
			r := store.Recidive{Window: win, Factor: rc.Factor, MaxTime: maxT}
			d := r.Duration(base, ev.Nth)
			fmt.Fprintf(&b, " (escalated: %s × %g^%d = %s", short(base.String()), rc.Factor, ev.Nth-1, short(d.String()))
			if maxT > 0 && d == maxT {
				b.WriteString(", recidive.maxtime")
			}
			b.WriteString(")")
		}
	case audit.KindRefusal:
		fmt.Fprintf(&b, "refused%s via %s: ban of %s (jail %s)", who, from, e(Target(ev.Subject)), e(ev.Jail))
	case audit.KindUnban:
		fmt.Fprintf(&b, "UNBAN %s (jail %s) by an administrator", e(Target(ev.Subject)), e(ev.Jail))
	default:
		fmt.Fprintf(&b, "%s", e(string(ev.Kind)))
	}
	fmt.Fprintf(&b, " [node %s, id %s]", e(ev.Node), e(ev.ID))
	return b.String()
}

// short writes a duration as people do: 1h, 10m, 1h30m.
func short(s string) string {
	d, err := time.ParseDuration(s)
	if err != nil {
		return s
	}
	s = d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// summary is the explanation in one sentence.
func summary(x Explanation) string {
	e := escape.String
	var failures int
	var lastBan, lastUnban *audit.Event
	for i, ev := range x.Events {
		mine := slices.Contains(x.Subjects, ev.Subject) // a ban on the target itself
		switch {
		case ev.Kind == audit.KindFailure:
			failures++
		case ev.Kind == audit.KindBan && mine:
			lastBan = &x.Events[i]
		case ev.Kind == audit.KindUnban && mine:
			lastUnban = &x.Events[i]
		}
	}
	var s string
	switch {
	case x.Ignored:
		s = "inside ignoreip, never banned"
	case len(x.Bans) > 0:
		b := x.Bans[0]
		s = fmt.Sprintf("banned: %s by jail %s (ban #%d) until %s", e(Target(b.Subject)), e(b.Jail), b.Nth, b.Expires.UTC().Format(time.RFC3339))
	case lastUnban != nil && (lastBan == nil || !lastUnban.Time.Before(lastBan.Time)):
		s = fmt.Sprintf("not banned: an administrator lifted the ban at %s", lastUnban.Time.UTC().Format(time.RFC3339))
	case lastBan != nil:
		s = fmt.Sprintf("not banned any more: the last ban (jail %s) ran out", e(lastBan.Jail))
	default:
		s = "not banned"
	}
	return fmt.Sprintf("%s; %d failure(s) in the audit trail", s, failures)
}

func (s *Server) clock() time.Time {
	if s.now != nil {
		return s.now()
	}
	return time.Now()
}
