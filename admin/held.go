package admin

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/escape"
)

// holdGuard is the optional ability behind GET /held and POST /confirm
// (guard.Guard has it): the blast-radius guard.
type holdGuard interface {
	Holding(ctx context.Context) (guard.HoldState, error)
	Confirm(ctx context.Context, target string) (guard.Released, error)
}

// Held is the reply of GET /held.
type Held struct {
	// Limit is safety.max_bans_per_minute; 0: the guard is off.
	Limit int `json:"max_bans_per_minute"`
	// Rate is the bans within the last minute, site-wide (at most Limit+1).
	Rate int       `json:"bans_last_minute"`
	Bans []HeldBan `json:"held"`
}

// HeldBan is one ban held back.
type HeldBan struct {
	Jail    string    `json:"jail"`
	Subject string    `json:"subject"`
	Held    time.Time `json:"held"`
	Expires time.Time `json:"expires"` // when it runs out unapplied
	Reason  string    `json:"reason,omitempty"`
}

// Confirmed is the reply of POST /confirm.
type Confirmed struct {
	Bans    []Ban `json:"bans"`    // applied
	Expired int   `json:"expired"` // dropped: their bantime ran out while held
}

func (s *Server) held(w http.ResponseWriter, r *http.Request) {
	out := Held{Bans: []HeldBan{}}
	if hg, ok := s.Guard.(holdGuard); ok {
		st, err := hg.Holding(r.Context())
		if err != nil {
			s.guardFailed(w, "held", err)
			return
		}
		out.Limit, out.Rate = st.Limit, st.Rate
		for _, h := range st.Held {
			out.Bans = append(out.Bans, HeldBan{Jail: h.Jail, Subject: h.Subject, Held: h.Held, Expires: h.Expires(), Reason: h.Reason})
		}
	}
	reply(w, http.StatusOK, out)
}

func (s *Server) confirm(w http.ResponseWriter, r *http.Request) {
	req, ok := decode(w, r)
	if !ok {
		return
	}
	hg, ok := s.Guard.(holdGuard)
	if !ok {
		fail(w, http.StatusNotFound, CodeNotFound, fmt.Errorf("this daemon has no blast-radius guard"))
		return
	}
	rel, err := hg.Confirm(r.Context(), req.Target)
	if err != nil && len(rel.Bans) == 0 {
		s.guardFailed(w, "confirm", err)
		return
	}
	if err != nil {
		s.log().Warn("admin: confirm: some held bans were not applied", "error", err)
	}
	out := Confirmed{Bans: []Ban{}, Expired: rel.Expired}
	for _, b := range rel.Bans {
		out.Bans = append(out.Bans, Ban{Jail: b.Jail, Subject: b.Subject, Created: b.Created, Expires: b.Expires, Nth: b.Nth, Reason: b.Reason})
	}
	reply(w, http.StatusOK, out)
}

// Held returns the blast-radius guard's state.
func (c *Client) Held(ctx context.Context) (Held, error) {
	var out Held
	return out, c.do(ctx, http.MethodGet, "/held", nil, &out)
}

// Confirm applies the held bans of target (every held ban when empty).
func (c *Client) Confirm(ctx context.Context, target string) (Confirmed, error) {
	var out Confirmed
	return out, c.do(ctx, http.MethodPost, "/confirm", banRequest{Target: target}, &out)
}

// maxHeldShown bounds the held bans `mailguard status` lists (the JSON has
// them all).
const maxHeldShown = 50

// PrintHeld prints the blast-radius guard's state after the jails of
// `mailguard status`.
func PrintHeld(w io.Writer, h Held, now time.Time) {
	if h.Limit == 0 {
		fmt.Fprintf(w, "Blast-radius guard: off (safety.max_bans_per_minute: 0)\n")
		return
	}
	fmt.Fprintf(w, "Blast-radius guard: %d bans in the last minute, limit %d (safety.max_bans_per_minute):", h.Rate, h.Limit)
	if len(h.Bans) == 0 {
		fmt.Fprintf(w, "\tnothing held\n")
		return
	}
	fmt.Fprintf(w, " %d bans HELD BACK, not applied; `mailguard confirm` applies them\n", len(h.Bans))
	for i, b := range h.Bans {
		if i == maxHeldShown {
			fmt.Fprintf(w, "   ... and %d more (mailguard confirm --list --json)\n", len(h.Bans)-i)
			break
		}
		fmt.Fprintf(w, "   %s\tjail %s\theld %s ago, runs out in %s\t%s\n", escape.String(Target(b.Subject)), escape.String(b.Jail),
			now.Sub(b.Held).Round(time.Second), b.Expires.Sub(now).Round(time.Second), escape.String(b.Reason))
	}
}
