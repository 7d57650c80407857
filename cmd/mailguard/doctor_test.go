package main

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/authhook"
	"github.com/mailguard/mailguard/internal/config"
	"github.com/mailguard/mailguard/policyd"
)

func problems(fs []finding) []string {
	var out []string
	for _, f := range fs {
		if f.problem {
			out = append(out, f.String())
		}
	}
	return out
}

func TestCheckPostfix(t *testing.T) {
	good := stockPolicy + ", permit_sasl_authenticated, reject"
	notes := map[string]string{ // case name: the start of a note it must print
		"after permit_mynetworks: a note": "note postfix: mailguard's check_policy_service comes after permit_mynetworks in main.cf smtpd_recipient_restrictions",
	}
	for _, tc := range []struct {
		name string
		edit func(pc *postfixConf)
		want []string // one problem each, in order
	}{
		{"good", func(pc *postfixConf) {
			pc.MainX[recipientList] = stockPolicy
			pc.Services[1].OverX[recipientList], pc.Services[2].OverX[recipientList] = good, good
		}, nil},
		{"missing everywhere", func(pc *postfixConf) {
			pc.MainX[recipientList] = "check_policy_service inet:127.0.0.1:10023"
		}, []string{
			"main.cf smtpd_recipient_restrictions has no check_policy_service for mailguard (postfix.listen 127.0.0.1:10028): Postfix never asks it (policy services found: inet:127.0.0.1:10023)",
			"master.cf service submission/inet overrides smtpd_recipient_restrictions without mailguard's check_policy_service",
			"master.cf service submissions/inet overrides smtpd_recipient_restrictions without",
		}},
		{"after permit_sasl_authenticated, no default_action", func(pc *postfixConf) {
			pc.MainX[recipientList] = stockPolicy
			pc.Services[1].OverX[recipientList] = "permit_sasl_authenticated, check_policy_service inet:127.0.0.1:10028, reject"
			pc.Services[2].OverX[recipientList] = good
		}, []string{
			"in master.cf service submission/inet -o smtpd_recipient_restrictions has no default_action",
			"comes after permit_sasl_authenticated in master.cf service submission/inet -o smtpd_recipient_restrictions: authenticated senders are never counted",
		}},
		{"after permit_mynetworks: a note", func(pc *postfixConf) {
			pc.MainX[recipientList] = "permit_mynetworks, " + stockPolicy
			pc.Services[1].OverX[recipientList], pc.Services[2].OverX[recipientList] = good, good
		}, nil},
		{"twice, through the client list", func(pc *postfixConf) {
			pc.MainX[recipientList] = stockPolicy
			pc.MainX["smtpd_client_restrictions"] = stockPolicy
			pc.Services[1].OverX[recipientList], pc.Services[2].OverX[recipientList] = good, good
		}, []string{"listed 2 times (main.cf smtpd_client_restrictions; main.cf smtpd_recipient_restrictions)"}},
		{"only in the client list", func(pc *postfixConf) {
			pc.MainX["smtpd_client_restrictions"] = stockPolicy
			pc.Services[1].OverX[recipientList], pc.Services[2].OverX[recipientList] = good, good
		}, []string{"is in main.cf smtpd_client_restrictions, not in smtpd_recipient_restrictions"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := debian()
			tc.edit(pc)
			fs := checkPostfix(pc, "127.0.0.1:10028", "mailguard setup postfix --write")
			got := problems(fs)
			if note := notes[tc.name]; note != "" {
				found := false
				for _, f := range fs {
					found = found || (!f.problem && strings.HasPrefix(f.String(), note))
				}
				if !found {
					t.Errorf("no note %q in %v", note, fs)
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("%d problems, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) || !strings.Contains(got[i], ". Fix: ") {
					t.Errorf("problem %d = %q, want it to say %q and a fix", i, got[i], w)
				}
			}
		})
	}
}

func TestCheckDovecot(t *testing.T) {
	c := config.Defaults()
	c.Dovecot.APIHeader = "Authorization: Bearer right"
	good := func() *dovecotConf {
		return &dovecotConf{File: "/etc/dovecot/dovecot.conf", URL: "http://127.0.0.1:10029/", APIHeader: "authorization:  Bearer right",
			Nonce: "n", FailureDelay: 2 * time.Second, Penalty: "off"}
	}
	for _, tc := range []struct {
		name string
		edit func(dc *dovecotConf)
		sasl []string
		want []string
	}{
		{"good", func(*dovecotConf) {}, []string{"submission/inet"}, nil},
		{"localhost URL", func(dc *dovecotConf) { dc.URL = "http://localhost:10029/" }, nil, nil},
		{"no URL", func(dc *dovecotConf) { dc.URL = "" }, nil, []string{"auth_policy_server_url is not set"}},
		{"URL elsewhere", func(dc *dovecotConf) { dc.URL = "http://127.0.0.1:10099/" }, nil,
			[]string{"auth_policy_server_url is http://127.0.0.1:10099/, but mailguard's dovecot.listen is 127.0.0.1:10029"}},
		{"https", func(dc *dovecotConf) { dc.URL = "https://127.0.0.1:10029/" }, nil, []string{"mailguard speaks plain http://"}},
		{"header mismatch", func(dc *dovecotConf) { dc.APIHeader = "Authorization: Bearer wrong" }, nil, []string{"does not match mailguard's dovecot.api_header"}},
		{"header placeholder", func(dc *dovecotConf) {
			dc.APIHeader = "Authorization: Bearer REPLACE_WITH_THE_KEY_IN_MAILGUARD_DOVECOT_API_HEADER"
		}, nil, []string{"still contrib's REPLACE_ placeholder"}},
		{"no nonce", func(dc *dovecotConf) { dc.Nonce = "" }, nil, []string{"auth_policy_hash_nonce is not set"}},
		{"penalty on, SMTP AUTH through Dovecot", func(dc *dovecotConf) { dc.Penalty = "on" }, []string{"submission/inet"},
			[]string{"held up to 22s (Dovecot's anvil penalty 15s + auth_failure_delay 2s + mailguard's dovecot.tarpit.max 5s)"}},
		{"penalty on, no SMTP AUTH through Dovecot", func(dc *dovecotConf) { dc.Penalty = "on" }, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dc := good()
			tc.edit(dc)
			fs := checkDovecot(dc, c, tc.sasl, "mailguard setup dovecot --write")
			got := problems(fs)
			if len(got) != len(tc.want) {
				t.Fatalf("%d problems, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d = %q, want it to say %q", i, got[i], w)
				}
			}
			for _, f := range fs {
				if s := f.String(); strings.Contains(s, "right") || strings.Contains(s, "wrong") {
					t.Errorf("a finding shows an API header value: %q", s)
				}
			}
		})
	}
	// Without dovecot.api_header: the daemon's key in state_dir.
	c.Dovecot.APIHeader = ""
	c.StateDir = t.TempDir()
	if got := problems(checkDovecot(good(), c, nil, "fix")); len(got) != 1 || !strings.Contains(got[0], "cannot tell which API header mailguard wants") {
		t.Errorf("no key yet: %q", got)
	}
	h, err := dovecotAPIHeader(c, true)
	if err != nil {
		t.Fatal(err)
	}
	dc := good()
	dc.APIHeader = h
	if got := problems(checkDovecot(dc, c, nil, "fix")); len(got) != 0 {
		t.Errorf("Dovecot sends the daemon's key: %q", got)
	}
	if got := problems(checkDovecot(good(), c, nil, "fix")); len(got) != 1 || !strings.Contains(got[0], "does not match") {
		t.Errorf("Dovecot sends another key than the daemon's: %q", got)
	}
	c.Dovecot.InsecureNoAuth = true
	if got := problems(checkDovecot(good(), c, nil, "fix")); len(got) != 1 || !strings.Contains(got[0], "insecure_no_auth is true") {
		t.Errorf("insecure_no_auth: %q", got)
	}
}

func TestSameAPIHeader(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"Authorization: Bearer k", "authorization:Bearer k ", true},
		{"k", "X-API-Key: k", true},
		{"Authorization: Bearer k", "Authorization: Bearer K", false},
		{"Authorization: Bearer k", "X-Auth: Bearer k", false},
	} {
		if got := sameAPIHeader(tc.a, tc.b); got != tc.same {
			t.Errorf("sameAPIHeader(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}

// nopGuard allows everybody and counts nothing.
type nopGuard struct{}

func (nopGuard) Check(context.Context, netip.Addr, string) (string, int, error) { return "", 0, nil }
func (nopGuard) Recipient(context.Context, netip.Addr, string) (bool, error)    { return false, nil }
func (nopGuard) Fail(context.Context, netip.Addr, string, string, string) error { return nil }
func (nopGuard) Succeed(context.Context, netip.Addr, string) error              { return nil }

// nopDovecotGuard is nopGuard as authhook consumes it.
type nopDovecotGuard struct{ nopGuard }

func (nopDovecotGuard) Check(context.Context, netip.Addr, string) (authhook.CheckResult, error) {
	return authhook.CheckResult{}, nil
}

// The probes doctor sends get the answers it expects from the real front
// ends: a policy action, and 400 (header passed) or 401 (header refused).
func TestProbes(t *testing.T) {
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pf := &policyd.Server{Guard: nopGuard{}}
	pfDone := make(chan error, 1)
	go func() { pfDone <- pf.Serve(pl) }()
	defer func() { pf.Close(); <-pfDone }()
	if err := probePolicy(context.Background(), pl.Addr().String()); err != nil {
		t.Errorf("probePolicy against policyd: %v", err)
	}

	dl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dv := &authhook.Server{Guard: nopDovecotGuard{}, APIHeader: "Authorization: Bearer k"}
	dvDone := make(chan error, 1)
	go func() { dvDone <- dv.Serve(dl) }()
	defer func() { dv.Close(); <-dvDone }()
	for _, tc := range []struct {
		header string
		code   int
	}{
		{"Authorization: Bearer k", http.StatusBadRequest},
		{"Authorization: Bearer other", http.StatusUnauthorized},
		{"", http.StatusUnauthorized},
	} {
		if code, err := probeAuthPolicy(context.Background(), dl.Addr().String(), tc.header); err != nil || code != tc.code {
			t.Errorf("probeAuthPolicy with header %q = %d, %v; want %d", tc.header, code, err, tc.code)
		}
	}

	free, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := free.Addr().String()
	free.Close()
	if err := probePolicy(context.Background(), addr); err == nil {
		t.Errorf("probePolicy with nothing listening: no error")
	}
}
