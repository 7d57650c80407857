package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/firewall"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/fakeclock"
	"github.com/mailguard/mailguard/store"
	"github.com/mailguard/mailguard/store/memstore"
)

// normalise replaces what changes from run to run: the ids (where ids
// stand: a random id may well be all letters).
var idSpots = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\bid [0-9a-z]{10}\b`), "id ID"},
	{regexp.MustCompile(`(?m)^[0-9a-z]{10} \(id\)`), "ID (id)"},
	{regexp.MustCompile(`The refusal [0-9a-z]{10}:`), "The refusal ID:"},
}

func normalise(s string) string {
	for _, n := range idSpots {
		s = n.re.ReplaceAllString(s, n.with)
	}
	return s
}

// TestExplainGolden runs a scripted attack through guard (a recorder on the
// embedded store, fake clock) and explains its subjects over the admin
// API, against testdata/explain-*.golden (-update rewrites them): a
// twice-banned address (the second ban escalated), a user with a known
// device, a refusal by its id, an ignoreip address, escaped logins.
func TestExplainGolden(t *testing.T) {
	clk := fakeclock.New(time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC))
	st, err := memstore.Open(memstore.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec := audit.NewRecorder(audit.Options{Node: "mx1", Users: audit.UserPlain, Store: st, Keep: 20, TTL: 24 * time.Hour, Now: clk.Now})
	defer rec.Close()
	g, err := guard.New(st, guard.Config{
		Jails: []guard.Jail{{Name: "dovecot", Events: []string{guard.EventAuthFailure}, Key: guard.KeyPrefix, MaxRetry: 3,
			FindTime: 10 * time.Minute, BanTime: time.Hour, Action: guard.ActionFirewall, Ports: []uint16{993}}},
		Ignore:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Prefixes: guard.Prefixes{IPv4: 32, IPv6: 64},
		Recidive: store.Recidive{Window: 24 * time.Hour, Factor: 2, MaxTime: 3 * time.Hour},
		Now:      clk.Now, Audit: rec,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := guard.WithOrigin(t.Context(), "dovecot", "imap")
	attacker := netip.MustParseAddr("192.0.2.7")
	fail := func(a netip.Addr, user string) {
		t.Helper()
		clk.Add(20 * time.Second)
		if _, err := g.Fail(ctx, a, user, "imap", ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Succeed(ctx, netip.MustParseAddr("198.51.100.4"), "alice@example.org"); err != nil {
		t.Fatal(err)
	}
	fail(attacker, "alice@example.org")
	fail(attacker, "bob@example.org")
	fail(attacker, "\x1b[31mevil\nforged line")
	clk.Add(time.Minute)
	v, err := g.CheckFrom(t.Context(), "postfix", "smtp", attacker, "")
	if err != nil || v.Ref == "" {
		t.Fatalf("CheckFrom = %+v, %v; want a refusal with a reference", v, err)
	}
	clk.Add(time.Minute)
	if _, err := g.Unban(t.Context(), "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	clk.Add(5 * time.Minute)
	for range 3 {
		fail(attacker, "alice@example.org")
	}
	fail(netip.MustParseAddr("198.51.100.4"), "alice@example.org") // from her known device
	if err := rec.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}

	s := &Server{Guard: g, now: clk.Now, FirewallBackend: "nftables", Kernel: func(context.Context) ([]firewall.Entry, error) {
		return []firewall.Entry{{Prefix: netip.MustParsePrefix("192.0.2.7/32"), Ports: []uint16{993}, Expires: clk.Now().Add(2 * time.Hour)},
			{Prefix: netip.MustParsePrefix("203.0.113.0/24"), Ports: []uint16{993}}}, nil
	}}
	h := s.Handler()
	for _, tc := range []struct{ name, target string }{
		{"address", "192.0.2.7"},
		{"user", "alice@example.org"},
		{"id", v.Ref},
		{"ignored", "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/explain?target="+url.QueryEscape(tc.target), nil)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != http.StatusOK {
				t.Fatalf("GET /explain?target=%s: %d %s", tc.target, w.Code, w.Body)
			}
			var x Explanation
			if err := json.Unmarshal(w.Body.Bytes(), &x); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			PrintExplain(&buf, x)
			got := normalise(buf.String())
			if strings.ContainsRune(got, '\x1b') {
				t.Errorf("output holds an escape character:\n%s", got)
			}
			path := "testdata/explain-" + tc.name + ".golden"
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("explain %s:\n%s\nwant (%s):\n%s", tc.target, got, path, want)
			}
		})
	}
	t.Run("bad target", func(t *testing.T) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/explain?target=%20", nil))
		if w.Code != http.StatusBadRequest {
			t.Errorf("GET /explain?target=' ' = %d %s, want 400", w.Code, w.Body)
		}
	})
}
