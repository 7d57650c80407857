package api

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailguard/mailguard/audit"
	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/internal/testcert"
	"github.com/mailguard/mailguard/store/memstore"
)

const (
	checkToken  = "check-token-0123456789"
	reportToken = "report-token-0123456789"
	adminToken  = "admin-token-0123456789"
	allToken    = "all-scopes-token-0123456789"
)

var tokensText = "# test tokens\n" +
	checkToken + " check nginx\n" +
	reportToken + " report roundcube\n" +
	adminToken + " admin\n" +
	allToken + " check,report,admin ops\n"

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testServer struct {
	url  string
	c    *http.Client
	g    *guard.Guard
	st   *memstore.Store
	logs *syncBuffer
}

var roundcubeJail = guard.Jail{Name: "roundcube", Events: []string{guard.EventAuthFailure}, Apps: []string{"roundcube"},
	Key: guard.KeyIP, MaxRetry: 3, FindTime: time.Hour, BanTime: time.Hour, Action: guard.ActionRefuse}

// start serves the API over a real guard and embedded store on a loopback
// port; setup, when not nil, adjusts the server before Serve.
func start(t *testing.T, setup func(*Server)) *testServer {
	t.Helper()
	return startAudited(t, nil, setup)
}

// startAudited is start with a guard that records to au (nil: none).
func startAudited(t *testing.T, au guard.Auditor, setup func(*Server)) *testServer {
	t.Helper()
	st, err := memstore.Open(memstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	g, err := guard.New(st, guard.Config{
		Jails: []guard.Jail{roundcubeJail, {Name: "dovecot", Events: []string{guard.EventAuthFailure}, Key: guard.KeyPrefix,
			MaxRetry: 5, FindTime: 10 * time.Minute, BanTime: time.Hour, Action: guard.ActionFirewall, Ports: []uint16{993}}},
		Ignore: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Log: log, Audit: au,
	})
	if err != nil {
		t.Fatal(err)
	}
	toks, err := ParseTokens(strings.NewReader(tokensText))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Guard: g, Tokens: toks, Log: log, FailOpen: true}
	if setup != nil {
		setup(s)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	scheme, c := "http", &http.Client{Timeout: 10 * time.Second}
	if s.TLS != nil {
		scheme = "https"
	}
	t.Cleanup(c.CloseIdleConnections)
	return &testServer{url: scheme + "://" + l.Addr().String(), c: c, g: g, st: st, logs: logs}
}

type answer struct {
	status int
	header http.Header
	body   []byte
	err    errorReply
}

func (ts *testServer) do(t *testing.T, method, path, token, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, ts.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := ts.c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, body: b}
	if resp.StatusCode >= 400 {
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: %d with Content-Type %q, want application/json", method, path, resp.StatusCode, ct)
		}
		if err := json.Unmarshal(b, &a.err); err != nil || a.err.Error == "" || a.err.Code == "" {
			t.Errorf("%s %s: %d with body %q: want a JSON error with error and code", method, path, resp.StatusCode, b)
		}
	}
	return a
}

func TestAuth(t *testing.T) {
	ts := start(t, nil)
	for _, tc := range []struct {
		name, method, path, header, body string
		status                           int
		code                             string
	}{
		{"no header", "GET", "/v1/check?ip=192.0.2.1", "", "", 401, CodeUnauthorized},
		{"basic", "GET", "/v1/check?ip=192.0.2.1", "Basic " + checkToken, "", 401, CodeUnauthorized},
		{"bearer empty", "GET", "/v1/check?ip=192.0.2.1", "Bearer ", "", 401, CodeUnauthorized},
		{"wrong token", "GET", "/v1/check?ip=192.0.2.1", "Bearer " + checkToken + "x", "", 401, CodeUnauthorized},
		{"prefix of a token", "GET", "/v1/check?ip=192.0.2.1", "Bearer " + checkToken[:20], "", 401, CodeUnauthorized},
		{"check ok", "GET", "/v1/check?ip=192.0.2.1", "Bearer " + checkToken, "", 204, ""},
		{"scheme case-insensitive", "GET", "/v1/check?ip=192.0.2.1", "bearer " + checkToken, "", 204, ""},
		{"report token on check", "GET", "/v1/check?ip=192.0.2.1", "Bearer " + reportToken, "", 403, CodeForbidden},
		{"check token on events", "POST", "/v1/events", "Bearer " + checkToken, `{"kind":"auth-failure","ip":"192.0.2.1"}`, 403, CodeForbidden},
		{"report ok", "POST", "/v1/events", "Bearer " + reportToken, `{"kind":"auth-failure","ip":"192.0.2.1"}`, 200, ""},
		{"report token on bans", "GET", "/v1/bans", "Bearer " + reportToken, "", 403, CodeForbidden},
		{"check token on unban", "DELETE", "/v1/bans?target=192.0.2.1", "Bearer " + checkToken, "", 403, CodeForbidden},
		{"admin ok", "GET", "/v1/bans", "Bearer " + adminToken, "", 200, ""},
		{"admin token on check", "GET", "/v1/check?ip=192.0.2.1", "Bearer " + adminToken, "", 403, CodeForbidden},
		{"all scopes", "GET", "/v1/check?ip=192.0.2.1", "Bearer " + allToken, "", 204, ""},
		{"openapi without token", "GET", "/v1/openapi.json", "", "", 200, ""},
		{"no token before 404", "GET", "/v1/nothing", "", "", 404, CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, ts.url+tc.path, strings.NewReader(tc.body))
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			resp, err := ts.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var e errorReply
			json.Unmarshal(b, &e)
			if resp.StatusCode != tc.status || e.Code != tc.code {
				t.Errorf("%s %s (%s) = %d %q, want %d %q", tc.method, tc.path, tc.name, resp.StatusCode, b, tc.status, tc.code)
			}
			if tc.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
		})
	}
	for _, tok := range []string{checkToken, reportToken, adminToken, allToken} {
		if strings.Contains(ts.logs.String(), tok[:12]) {
			t.Errorf("a token reached the log:\n%s", ts.logs.String())
		}
	}
}

// Every bad input gets a JSON error with its status and code, and leaves
// the server answering.
func TestBadInput(t *testing.T) {
	ts := start(t, nil)
	big := `{"kind":"auth-failure","ip":"192.0.2.1","user":"` + strings.Repeat("a", MaxBody) + `"}`
	for _, tc := range []struct {
		name, method, path, token, body string
		status                          int
		code                            string
	}{
		{"check no ip", "GET", "/v1/check", checkToken, "", 400, CodeInvalid},
		{"check empty ip", "GET", "/v1/check?ip=", checkToken, "", 400, CodeInvalid},
		{"check bad ip", "GET", "/v1/check?ip=192.0.2.300", checkToken, "", 400, CodeInvalid},
		{"check hostname", "GET", "/v1/check?ip=example.org", checkToken, "", 400, CodeInvalid},
		{"check cidr", "GET", "/v1/check?ip=192.0.2.0/24", checkToken, "", 400, CodeInvalid},
		{"check two ips", "GET", "/v1/check?ip=192.0.2.1&ip=192.0.2.2", checkToken, "", 400, CodeInvalid},
		{"check unknown param", "GET", "/v1/check?ip=192.0.2.1&usr=x", checkToken, "", 400, CodeInvalid},
		{"check long user", "GET", "/v1/check?ip=192.0.2.1&user=" + strings.Repeat("u", maxUser+1), checkToken, "", 400, CodeInvalid},
		{"check bad query", "GET", "/v1/check?ip=%zz", checkToken, "", 400, CodeInvalid},
		{"check POST", "POST", "/v1/check?ip=192.0.2.1", checkToken, "", 405, CodeMethod},
		{"events empty", "POST", "/v1/events", reportToken, "", 400, CodeInvalid},
		{"events not json", "POST", "/v1/events", reportToken, "kind=auth-failure", 400, CodeInvalid},
		{"events array", "POST", "/v1/events", reportToken, `[]`, 400, CodeInvalid},
		{"events unknown field", "POST", "/v1/events", reportToken, `{"kind":"auth-failure","ip":"192.0.2.1","password":"x"}`, 400, CodeInvalid},
		{"events two objects", "POST", "/v1/events", reportToken, `{"kind":"auth-failure","ip":"192.0.2.1"}{}`, 400, CodeInvalid},
		{"events trailing", "POST", "/v1/events", reportToken, `{"kind":"auth-failure","ip":"192.0.2.1"} x`, 400, CodeInvalid},
		{"events no kind", "POST", "/v1/events", reportToken, `{"ip":"192.0.2.1"}`, 400, CodeInvalid},
		{"events unknown kind", "POST", "/v1/events", reportToken, `{"kind":"rcpt","ip":"192.0.2.1"}`, 400, CodeInvalid},
		{"events no ip", "POST", "/v1/events", reportToken, `{"kind":"auth-failure"}`, 400, CodeInvalid},
		{"events bad ip", "POST", "/v1/events", reportToken, `{"kind":"auth-failure","ip":"1.2.3"}`, 400, CodeInvalid},
		{"events ip number", "POST", "/v1/events", reportToken, `{"kind":"auth-failure","ip":17}`, 400, CodeInvalid},
		{"events bad app", "POST", "/v1/events", reportToken, `{"kind":"auth-failure","ip":"192.0.2.1","app":"Round Cube"}`, 400, CodeInvalid},
		{"events too large", "POST", "/v1/events", reportToken, big, 413, CodeTooLarge},
		{"events GET", "GET", "/v1/events", reportToken, "", 405, CodeMethod},
		{"ban empty", "POST", "/v1/bans", adminToken, `{}`, 400, CodeInvalid},
		{"ban bad target", "POST", "/v1/bans", adminToken, `{"target":"not a target!"}`, 400, CodeInvalid},
		{"ban bad for", "POST", "/v1/bans", adminToken, `{"target":"192.0.2.9","for":"ever"}`, 400, CodeInvalid},
		{"ban negative for", "POST", "/v1/bans", adminToken, `{"target":"192.0.2.9","for":"-1h"}`, 400, CodeInvalid},
		{"ban unknown jail", "POST", "/v1/bans", adminToken, `{"target":"192.0.2.9","jail":"nope"}`, 404, CodeNotFound},
		{"ban ignoreip", "POST", "/v1/bans", adminToken, `{"target":"127.0.0.5"}`, 409, CodeIgnored},
		{"unban no target", "DELETE", "/v1/bans", adminToken, "", 400, CodeInvalid},
		{"unban not banned", "DELETE", "/v1/bans?target=192.0.2.77", adminToken, "", 404, CodeNotFound},
		{"unban bad target", "DELETE", "/v1/bans?target=a%20b", adminToken, "", 400, CodeInvalid},
		{"bans unknown jail", "GET", "/v1/bans?jail=nope", adminToken, "", 404, CodeNotFound},
		{"bans unknown param", "GET", "/v1/bans?jial=dovecot", adminToken, "", 400, CodeInvalid},
		{"bans PUT", "PUT", "/v1/bans", adminToken, "", 405, CodeMethod},
		{"unknown route", "GET", "/v2/check", checkToken, "", 404, CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := ts.do(t, tc.method, tc.path, tc.token, tc.body)
			if a.status != tc.status || a.err.Code != tc.code {
				t.Errorf("%s %s = %d %s, want %d %s", tc.method, tc.path, a.status, a.body, tc.status, tc.code)
			}
			if tc.status == 405 && a.header.Get("Allow") == "" {
				t.Errorf("405 without Allow")
			}
		})
	}
	// Content-Type other than JSON.
	req, _ := http.NewRequest("POST", ts.url+"/v1/events", strings.NewReader(`{"kind":"auth-failure","ip":"192.0.2.1"}`))
	req.Header.Set("Authorization", "Bearer "+reportToken)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := ts.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 415 {
		t.Errorf("form body: %d, want 415", resp.StatusCode)
	}
	if a := ts.do(t, "GET", "/v1/check?ip=192.0.2.1", checkToken, ""); a.status != 204 {
		t.Errorf("after the bad requests: check = %d", a.status)
	}
}

func TestCheckBanUnbanRoundTrip(t *testing.T) {
	ts := start(t, nil)
	check := func(q string, want int) answer {
		t.Helper()
		a := ts.do(t, "GET", "/v1/check?"+q, checkToken, "")
		if a.status != want {
			t.Fatalf("check %s = %d %s, want %d", q, a.status, a.body, want)
		}
		return a
	}
	check("ip=2001:db8:7::1", 204)
	a := ts.do(t, "POST", "/v1/bans", adminToken, `{"target":"2001:db8:7::/64","for":"30m"}`)
	var b Ban
	if a.status != 201 || json.Unmarshal(a.body, &b) != nil || b.Subject != "net:2001:db8:7::/64" || b.Jail != guard.ManualJail ||
		b.Expires.Sub(b.Created).Round(time.Second) != 30*time.Minute {
		t.Fatalf("ban = %d %s", a.status, a.body)
	}
	r := check("ip=2001:db8:7::99", 403)
	if r.err.Code != CodeRefused || r.err.Subject != "net:2001:db8:7::/64" {
		t.Errorf("refusal = %s, want code refused and the subject", r.body)
	}
	check("ip=2001:db8:8::1", 204)
	var list BanList
	if a := ts.do(t, "GET", "/v1/bans", adminToken, ""); a.status != 200 || json.Unmarshal(a.body, &list) != nil || len(list.Bans) != 1 {
		t.Errorf("bans = %d %s, want the one ban", a.status, a.body)
	}
	if a := ts.do(t, "GET", "/v1/bans?jail=roundcube", adminToken, ""); a.status != 200 || !strings.Contains(string(a.body), `"bans":[]`) {
		t.Errorf("bans of roundcube = %d %s, want none", a.status, a.body)
	}
	var lifted Lifted
	if a := ts.do(t, "DELETE", "/v1/bans?target=2001:db8:7::/64", adminToken, ""); a.status != 200 ||
		json.Unmarshal(a.body, &lifted) != nil || len(lifted.Lifted) != 1 {
		t.Fatalf("unban = %d %s", a.status, a.body)
	}
	check("ip=2001:db8:7::99", 204)
	// A user ban refuses with user=, not without.
	if a := ts.do(t, "POST", "/v1/bans", adminToken, `{"target":"Alice@Example.org"}`); a.status != 201 {
		t.Fatalf("ban user = %d %s", a.status, a.body)
	}
	check("ip=192.0.2.5", 204)
	check("ip=192.0.2.5&user=alice@example.org", 403)
}

// Reports of failed logins are counted by the jails naming the event (and
// the app) and ban; the banned browser is then refused by /v1/check.
func TestEventsBan(t *testing.T) {
	ts := start(t, nil)
	post := func(body string) EventReply {
		t.Helper()
		a := ts.do(t, "POST", "/v1/events", reportToken, body)
		var r EventReply
		if a.status != 200 || json.Unmarshal(a.body, &r) != nil {
			t.Fatalf("events %s = %d %s", body, a.status, a.body)
		}
		return r
	}
	r := post(`{"kind":"auth-failure","ip":"198.51.100.4","user":"bob","app":"postfixadmin"}`)
	if fmt.Sprint(r.Counted) != "[dovecot]" || len(r.Bans) != 0 {
		t.Errorf("postfixadmin failure: %+v, want counted by dovecot only", r)
	}
	for i := range 2 {
		r = post(`{"kind":"auth-failure","ip":"198.51.100.5","user":"bob","app":"roundcube"}`)
		if slices.Sort(r.Counted); fmt.Sprint(r.Counted) != "[dovecot roundcube]" || len(r.Bans) != 0 {
			t.Errorf("roundcube failure %d: %+v, want counted by dovecot and roundcube, no ban", i+1, r)
		}
	}
	if a := ts.do(t, "GET", "/v1/check?ip=198.51.100.5", checkToken, ""); a.status != 204 {
		t.Errorf("check after 2 failures = %d", a.status)
	}
	r = post(`{"kind":"auth-failure","ip":"198.51.100.5","user":"bob","app":"roundcube"}`)
	if len(r.Bans) != 1 || r.Bans[0].Jail != "roundcube" || r.Bans[0].Subject != "net:198.51.100.5/32" {
		t.Errorf("third roundcube failure: %+v, want a roundcube ban", r)
	}
	if a := ts.do(t, "GET", "/v1/check?ip=198.51.100.5", checkToken, ""); a.status != 403 {
		t.Errorf("check after the ban = %d, want 403", a.status)
	}
	if r := post(`{"kind":"auth-success","ip":"198.51.100.6","user":"carol","app":"roundcube"}`); len(r.Counted) != 0 {
		t.Errorf("success: %+v", r)
	}
	if r := post(`{"kind":"auth-failure","ip":"127.0.0.9","app":"roundcube"}`); len(r.Counted) != 0 {
		t.Errorf("failure from ignoreip: %+v, want not counted", r)
	}
	if !strings.Contains(ts.logs.String(), "jail=roundcube") {
		t.Errorf("no ban line in the log:\n%s", ts.logs.String())
	}
}

// With the store down, /v1/check follows the fail mode.
func TestCheckStoreDown(t *testing.T) {
	for _, open := range []bool{true, false} {
		ts := start(t, func(s *Server) { s.FailOpen = open })
		ts.st.Close()
		want := map[bool]int{true: 204, false: 503}[open]
		if a := ts.do(t, "GET", "/v1/check?ip=192.0.2.1", checkToken, ""); a.status != want {
			t.Errorf("fail open %v: check = %d %s, want %d", open, a.status, a.body, want)
		}
		if a := ts.do(t, "POST", "/v1/events", reportToken, `{"kind":"auth-failure","ip":"192.0.2.1"}`); a.status != 503 || a.err.Code != CodeUnavailable {
			t.Errorf("events with the store down = %d %s, want 503", a.status, a.body)
		}
	}
}

// auditLog is a guard.Auditor that keeps the events.
type auditLog struct {
	mu     sync.Mutex
	events []audit.Event
}

func (l *auditLog) Record(e audit.Event) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
	return fmt.Sprintf("ev%d", len(l.events))
}

func (l *auditLog) refusals() []audit.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []audit.Event
	for _, e := range l.events {
		if e.Kind == audit.KindRefusal {
			out = append(out, e)
		}
	}
	return out
}

// A refusal of /v1/check is audited with the source api:NAME of the
// check token that asked and protocol http (README, audit trail), one
// event per token (source) and banned subject.
func TestCheckRefusalAuditSource(t *testing.T) {
	au := &auditLog{}
	ts := startAudited(t, au, nil)
	if _, err := ts.g.Ban(t.Context(), "192.0.2.7", "", time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{checkToken, allToken, checkToken} {
		if a := ts.do(t, "GET", "/v1/check?ip=192.0.2.7", tok, ""); a.status != 403 {
			t.Fatalf("check of a banned address = %d %s, want 403", a.status, a.body)
		}
	}
	var got []string
	for _, e := range au.refusals() {
		got = append(got, e.Source+" "+e.Protocol+" "+e.Addr+" "+e.Subject)
	}
	want := []string{"api:nginx http 192.0.2.7 net:192.0.2.7/32", "api:ops http 192.0.2.7 net:192.0.2.7/32"}
	if !slices.Equal(got, want) {
		t.Errorf("refusal events (source protocol addr subject) = %q, want %q", got, want)
	}
}

func TestTLS(t *testing.T) {
	cert, pool := testcert.New(t)
	ts := start(t, func(s *Server) {
		s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	})
	ts.c.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	if a := ts.do(t, "GET", "/v1/check?ip=192.0.2.1", checkToken, ""); a.status != 204 {
		t.Errorf("check over TLS = %d", a.status)
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	resp, err := plain.Get("http" + strings.TrimPrefix(ts.url, "https") + "/v1/openapi.json")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the TLS port = %d, want refused", resp.StatusCode)
		}
	}
}

// Checks, reports, bans and unbans from many clients at once (run with
// -race): every answer is one the route may give.
func TestConcurrency(t *testing.T) {
	ts := start(t, func(s *Server) { s.MaxConns = 64 })
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				ip := fmt.Sprintf("198.51.100.%d", (w*50+i)%20+1)
				var a answer
				var ok bool
				switch i % 4 {
				case 0:
					a = ts.do(t, "GET", "/v1/check?ip="+ip, checkToken, "")
					ok = a.status == 204 || a.status == 403
				case 1:
					a = ts.do(t, "POST", "/v1/events", reportToken, `{"kind":"auth-failure","ip":"`+ip+`","app":"roundcube"}`)
					ok = a.status == 200
				case 2:
					a = ts.do(t, "POST", "/v1/bans", adminToken, `{"target":"`+ip+`","for":"1m"}`)
					ok = a.status == 201
				case 3:
					a = ts.do(t, "DELETE", "/v1/bans?target="+ip, adminToken, "")
					ok = a.status == 200 || a.status == 404
				}
				if !ok {
					select {
					case errs <- fmt.Sprintf("worker %d request %d: %d %s", w, i, a.status, a.body):
					default:
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// The connection cap holds with keep-alive clients: at most MaxConns
// connections, and every client still gets its answers.
func TestConnectionCap(t *testing.T) {
	const n = 4
	ts := start(t, func(s *Server) { s.MaxConns = n })
	var idle []net.Conn
	for range 2 * n {
		c, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	if a := ts.do(t, "GET", "/v1/check?ip=192.0.2.1", checkToken, ""); a.status != 204 {
		t.Errorf("check with %d idle connections open = %d", 2*n, a.status)
	}
	closed := 0
	deadline := time.Now().Add(2 * time.Second)
	for _, c := range idle {
		c.SetReadDeadline(deadline)
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed++
		}
	}
	if closed < n {
		t.Errorf("%d of %d idle connections closed, want at least %d", closed, len(idle), n)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
