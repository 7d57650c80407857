package admin

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/escape"
)

// sharedGuard is the optional ability behind GET /shared (guard.Guard has
// it): the shared addresses of the shared-address rule.
type sharedGuard interface {
	SharedAddresses(ctx context.Context) (map[string]int, guard.SharedRule, error)
}

// Shared is the reply of GET /shared.
type Shared struct {
	// MinUsers and Window are the rule (safety.shared_address); MinUsers 0:
	// the rule is off.
	MinUsers  int             `json:"min_users"`
	Window    string          `json:"window"`
	Addresses []SharedAddress `json:"addresses"`
}

// SharedAddress is one shared address (a prefix) and the distinct users
// counted there (at most MinUsers are counted).
type SharedAddress struct {
	Subject string `json:"subject"`
	Users   int    `json:"users"`
}

func (s *Server) shared(w http.ResponseWriter, r *http.Request) {
	out := Shared{Addresses: []SharedAddress{}}
	if sg, ok := s.Guard.(sharedGuard); ok {
		m, rule, err := sg.SharedAddresses(r.Context())
		if err != nil {
			s.guardFailed(w, "shared", err)
			return
		}
		out.MinUsers, out.Window = rule.MinUsers, rule.Window.String()
		for sub, n := range m {
			out.Addresses = append(out.Addresses, SharedAddress{Subject: sub, Users: n})
		}
		slices.SortFunc(out.Addresses, func(a, b SharedAddress) int {
			if a.Subject < b.Subject {
				return -1
			}
			if a.Subject > b.Subject {
				return 1
			}
			return 0
		})
	}
	reply(w, http.StatusOK, out)
}

// Shared returns the shared addresses.
func (c *Client) Shared(ctx context.Context) (Shared, error) {
	var out Shared
	return out, c.do(ctx, http.MethodGet, "/shared", nil, &out)
}

// PrintShared prints the shared addresses after the jails of `mailguard
// status`.
func PrintShared(w io.Writer, sh Shared) {
	if sh.MinUsers == 0 {
		fmt.Fprintf(w, "Shared addresses: rule off (safety.shared_address.min_users: 0)\n")
		return
	}
	d, _ := time.ParseDuration(sh.Window)
	fmt.Fprintf(w, "Shared addresses (%d+ users logged in within %s: never banned by address jails):", sh.MinUsers, d)
	if len(sh.Addresses) == 0 {
		fmt.Fprintf(w, "\tnone\n")
		return
	}
	fmt.Fprintln(w)
	for _, a := range sh.Addresses {
		fmt.Fprintf(w, "   %s\t%d users\n", escape.String(Target(a.Subject)), a.Users)
	}
}
