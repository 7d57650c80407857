package e2e

import (
	"strings"
	"testing"

	"github.com/mailguard/mailguard/store/redisstore/redistest"
)

// store.fail_mode with real Postfix and Dovecot and a Redis store that the
// test kills: closed answers Postfix's RCPT with 450 4.3.0 and refuses the
// Dovecot login with the temporary-failure message; open lets both through.
func TestFailModeRealServers(t *testing.T) {
	for _, mode := range []string{"closed", "open"} {
		t.Run(mode, func(t *testing.T) {
			srv := redistest.StartServer(t, redistest.Config{})
			d := NewDaemon(t, redisSets(srv.Addr(), redisPrefix(), "store.fail_mode="+mode, "store.timeout=300ms")...)
			d.Start()
			dv := StartDovecot(t, "http://"+d.Dovecot+"/", DovecotOptions{})
			pf := StartPostfix(t, d.Postfix)
			const src = "127.0.0.12"

			if r, _ := rcpt(t, pf.Addr, src); !strings.HasPrefix(r, "250") {
				t.Fatalf("with Redis up, RCPT = %q, want 250", r)
			}
			if r := imapLogin(t, dv.IMAP, src, testUser, testPassword); !strings.HasPrefix(r, "a1 OK") {
				t.Fatalf("with Redis up, IMAP login = %q, want OK", r)
			}

			srv.Kill()
			wantRCPT, wantIMAP := "250", "a1 OK"
			if mode == "closed" {
				// DEFER_IF_PERMIT 4.3.0: the restrictions after the policy
				// permit, so Postfix defers.
				wantRCPT, wantIMAP = "450 4.3.0", "a1 NO [ALERT] Temporary authentication failure"
			}
			r, closed := rcpt(t, pf.Addr, src)
			if !strings.HasPrefix(r, wantRCPT) || closed {
				t.Errorf("with Redis down (fail_mode %s), RCPT = %q (closed %v), want %s and the session kept", mode, r, closed, wantRCPT)
			}
			if r := imapLogin(t, dv.IMAP, src, testUser, testPassword); !strings.HasPrefix(r, wantIMAP) {
				t.Errorf("with Redis down (fail_mode %s), IMAP login = %q, want %s", mode, r, wantIMAP)
			}
			// /metrics is served while the store is down (it used to answer
			// 500, as mailguard_bans_active could not be read).
			if n := metricSum(t, d.Metrics, "mailguard_store_errors_total", ""); n == 0 {
				t.Errorf("mailguard_store_errors_total = 0 with Redis down")
			}
		})
	}
}
