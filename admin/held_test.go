package admin

import (
	"bytes"
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/store/memstore"
)

// GET /held and POST /confirm through the socket, against a real guard
// over the embedded store: held bans are listed, one subject's confirm
// applies it alone, --all the rest.
func TestHeldAndConfirm(t *testing.T) {
	ctx := context.Background()
	st, err := memstore.Open(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	jail := guard.Jail{Name: "dovecot", Events: []string{guard.EventAuthFailure}, Key: guard.KeyIP, MaxRetry: 1,
		FindTime: time.Minute, BanTime: time.Hour, Action: guard.ActionRefuse}
	g, err := guard.New(st, guard.Config{Jails: []guard.Jail{jail}, MaxBansPerMinute: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		if _, err := g.Fail(ctx, netip.MustParseAddr(a), "", "imap", ""); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(t.TempDir(), "admin.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Guard: g}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() { srv.Close(); <-done }()
	c := &Client{Socket: sock}

	h, err := c.Held(ctx)
	if err != nil || h.Limit != 1 || len(h.Bans) != 2 || h.Bans[0].Subject != "net:192.0.2.2/32" {
		t.Fatalf("Held = %+v, %v; want limit 1, 192.0.2.2 and .3 held", h, err)
	}
	var out bytes.Buffer
	PrintHeld(&out, h, time.Now())
	if s := out.String(); !strings.Contains(s, "2 bans HELD BACK") || !strings.Contains(s, "192.0.2.3\tjail dovecot") {
		t.Errorf("PrintHeld:\n%s", s)
	}
	if _, err := c.Confirm(ctx, "not a target/x"); err == nil {
		t.Errorf("Confirm(bad target) = nil error")
	}
	r, err := c.Confirm(ctx, "192.0.2.3")
	if err != nil || len(r.Bans) != 1 || r.Bans[0].Subject != "net:192.0.2.3/32" {
		t.Fatalf("Confirm(192.0.2.3) = %+v, %v", r, err)
	}
	r, err = c.Confirm(ctx, "")
	if err != nil || len(r.Bans) != 1 || r.Bans[0].Subject != "net:192.0.2.2/32" {
		t.Fatalf("Confirm(all) = %+v, %v", r, err)
	}
	if h, err := c.Held(ctx); err != nil || len(h.Bans) != 0 {
		t.Errorf("Held after confirm = %+v, %v; want none", h, err)
	}
}
