package authhook

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

type recorded struct {
	Path string          `json:"path"`
	Body json.RawMessage `json:"body"`
}

// TestGolden replays the requests recorded from Dovecot 2.3.19, and those
// built from Dovecot 2.4's src/auth/auth-policy.c (dovecot-2.4-*.json: the
// same attributes plus fail_type, pwhash with nonce "nonce"), and compares
// the guard calls and replies with testdata/*.golden. 127.0.0.3 is banned,
// the tarpit starts at the first failure.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/dovecot-*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no recorded requests: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var reqs []recorded
			if err := json.Unmarshal(data, &reqs); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			g := newFakeGuard("127.0.0.3")
			log, _ := testLogger(t)
			s := &Server{Guard: g, Log: log, FailOpen: true,
				Tarpit: Tarpit{Start: 1, Base: time.Second, Max: 5 * time.Second}}
			var out strings.Builder
			for _, rq := range reqs {
				r := httptest.NewRequest(http.MethodPost, rq.Path, strings.NewReader(string(rq.Body)))
				w := httptest.NewRecorder()
				s.ServeHTTP(w, r)
				var compact bytes.Buffer
				if err := json.Compact(&compact, rq.Body); err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&out, "> POST %s %s\n", rq.Path, compact.Bytes())
				for _, c := range g.takeCalls() {
					fmt.Fprintf(&out, "  guard: %s\n", c)
				}
				fmt.Fprintf(&out, "< %d %s\n", w.Code, strings.TrimSpace(w.Body.String()))
			}
			golden := strings.TrimSuffix(file, ".json") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(out.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if got := out.String(); got != string(want) {
				t.Errorf("replies differ from %s:\ngot:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	good := reqBody("192.0.2.1", "alice", "s1")
	tests := []struct {
		name, method, target, body string
		code                       int
		outcome                    string
	}{
		{"get", http.MethodGet, "/?command=allow", good, 405, "bad method"},
		{"put", http.MethodPut, "/?command=report", good, 405, "bad method"},
		{"no command", http.MethodPost, "/", good, 400, "bad command"},
		{"unknown command", http.MethodPost, "/?command=ban", good, 400, "bad command"},
		{"too large", http.MethodPost, "/?command=allow", `{"remote":"192.0.2.1","x":"` + strings.Repeat("a", 200) + `"}`, 413, "bad too-large"},
		{"empty body", http.MethodPost, "/?command=allow", ``, 400, "bad json"},
		{"not json", http.MethodPost, "/?command=allow", `remote=192.0.2.1`, 400, "bad json"},
		{"array", http.MethodPost, "/?command=allow", `[` + good + `]`, 400, "bad json"},
		{"truncated", http.MethodPost, "/?command=allow", good[:len(good)-1], 400, "bad json"},
		{"trailing data", http.MethodPost, "/?command=allow", good + `{}`, 400, "bad json"},
		{"number login", http.MethodPost, "/?command=allow", `{"remote":"192.0.2.1","login":7}`, 400, "bad json"},
		{"string success", http.MethodPost, "/?command=report", `{"remote":"192.0.2.1","success":"false"}`, 400, "bad json"},
		{"missing remote", http.MethodPost, "/?command=allow", `{"login":"alice"}`, 400, "bad no-remote"},
		{"null", http.MethodPost, "/?command=allow", `null`, 400, "bad no-remote"},
		{"remote not an address", http.MethodPost, "/?command=allow", `{"remote":"mail.example.org"}`, 400, "bad bad-remote"},
		{"remote with port", http.MethodPost, "/?command=report", `{"remote":"192.0.2.1:993"}`, 400, "bad bad-remote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGuard()
			m := &fakeMetrics{}
			log, _ := testLogger(t)
			s := &Server{Guard: g, Metrics: m, Log: log, MaxBody: 128}
			r := httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
			w := httptest.NewRecorder()
			s.ServeHTTP(w, r)
			if w.Code != tt.code {
				t.Errorf("%s %s %q: code %d, want %d", tt.method, tt.target, tt.body, w.Code, tt.code)
			}
			var e struct{ Error string }
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Errorf("body %q: want a JSON error (%v)", w.Body.String(), err)
			}
			if got := m.all(); got != tt.outcome {
				t.Errorf("metrics %q, want %q", got, tt.outcome)
			}
			if c := g.takeCalls(); len(c) != 0 {
				t.Errorf("guard called: %v", c)
			}
		})
	}
}

func TestAPIHeader(t *testing.T) {
	body := reqBody("192.0.2.1", "alice", "s1")
	tests := []struct {
		name, setting string
		hdr           []string
		code          int
	}{
		{"no setting", "", nil, 200},
		{"bearer", "Authorization: Bearer KEY", []string{"Authorization", "Bearer KEY"}, 200},
		{"spaces trimmed", "  Authorization :  Bearer KEY  ", []string{"Authorization", "Bearer KEY"}, 200},
		{"name case", "authorization: Bearer KEY", []string{"AUTHORIZATION", "Bearer KEY"}, 200},
		{"wrong value", "Authorization: Bearer KEY", []string{"Authorization", "Bearer KEX"}, 401},
		{"prefix of value", "Authorization: Bearer KEY", []string{"Authorization", "Bearer KE"}, 401},
		{"value case", "Authorization: Bearer KEY", []string{"Authorization", "bearer key"}, 401},
		{"missing", "Authorization: Bearer KEY", nil, 401},
		{"other header", "Authorization: Bearer KEY", []string{"X-API-Key", "Bearer KEY"}, 401},
		{"bare value", "sekrit", []string{"X-API-Key", "sekrit"}, 200},
		{"bare value wrong", "sekrit", []string{"X-API-Key", "other"}, 401},
		{"value with colon", "X-Token: a:b", []string{"X-Token", "a:b"}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &fakeMetrics{}
			log, buf := testLogger(t)
			s := &Server{Guard: newFakeGuard(), APIHeader: tt.setting, Metrics: m, Log: log}
			code, _ := post(s, "allow", body, tt.hdr...)
			if code != tt.code {
				t.Errorf("setting %q, header %q: code %d, want %d", tt.setting, tt.hdr, code, tt.code)
			}
			if tt.code == 401 {
				if !strings.Contains(buf.String(), "API header") {
					t.Errorf("no log line for 401: %q", buf.String())
				}
				if strings.Contains(buf.String(), "KEY") || strings.Contains(buf.String(), "sekrit") {
					t.Errorf("the key was logged: %q", buf.String())
				}
				if got := m.last(); got != "bad unauthorized" {
					t.Errorf("metrics %q", got)
				}
			}
		})
	}
}

// TestTwoAllows checks that only the before-auth allow of a login attempt is
// tarpitted, told apart from the after-auth one by order.
func TestTwoAllows(t *testing.T) {
	g := newFakeGuard()
	g.setFailures("192.0.2.1", 5)
	g.setFailures("192.0.2.2", 5)
	log, _ := testLogger(t)
	now := time.Unix(1_700_000_000, 0)
	s := &Server{Guard: g, Log: log, Tarpit: DefaultTarpit, MaxSessions: 3, now: func() time.Time { return now }}
	imap := reqBody("192.0.2.1", "alice", "sess1")
	smtp := reqBody("192.0.2.2", "alice", "", "protocol", "smtp")
	smtp2 := reqBody("192.0.2.2", "alice", "", "protocol", "smtp", "pwhash", "0def")
	other := reqBody("192.0.2.1", "bob", "sess1")

	steps := []struct {
		name, command, body string
		tarpit              bool
	}{
		{"imap before", "allow", imap, true},
		{"imap after", "allow", imap, false},
		{"imap report", "report", imap, false},
		{"imap next attempt, same session", "allow", imap, true},
		{"other login, same session", "allow", other, true},
		{"imap failed", "report", imap, false},
		{"imap again", "allow", imap, true},
		{"smtp before", "allow", smtp, true},
		{"smtp parallel, other password", "allow", smtp2, true},
		{"smtp after", "allow", smtp, false},
		{"smtp2 after", "allow", smtp2, false},
		{"smtp report", "report", smtp, false},
	}
	for _, st := range steps {
		code, body := post(s, st.command, st.body)
		if code != 200 {
			t.Fatalf("%s: code %d %s", st.name, code, body)
		}
		if got := decodeReply(t, body).Status; (got > 0) != st.tarpit || got < 0 {
			t.Errorf("%s: status %d, want tarpit %v", st.name, got, st.tarpit)
		}
	}

	// An after-auth allow still refuses.
	post(s, "allow", imap) // "imap again" left an entry: this is after-auth
	g.setRefused("192.0.2.1", true)
	post(s, "report", imap)
	post(s, "allow", imap)
	if _, body := post(s, "allow", imap); decodeReply(t, body) != (Reply{Status: -1, Msg: DefaultRejectMsg}) {
		t.Errorf("after-auth allow of a refused client: %s", body)
	}
	g.setRefused("192.0.2.1", false)

	// Entries expire: a before-auth allow whose attempt was never reported
	// no longer makes the next allow an after-auth one.
	post(s, "allow", imap)
	now = now.Add(DefaultSessionTTL)
	if _, body := post(s, "allow", imap); decodeReply(t, body).Status <= 0 {
		t.Errorf("allow after the session expired: %s, want a tarpit", body)
	}
	// The map is bounded: the oldest entry goes first.
	for i := range 5 {
		post(s, "allow", reqBody("192.0.2.1", "alice", fmt.Sprint("flood", i)))
	}
	if n := s.sess.len(); n != 3 {
		t.Errorf("%d sessions kept, want MaxSessions = 3", n)
	}
}

func TestTarpitDelay(t *testing.T) {
	tests := []struct {
		t        Tarpit
		failures int
		want     time.Duration
	}{
		{DefaultTarpit, 0, 0},
		{DefaultTarpit, 2, 0},
		{DefaultTarpit, 3, time.Second},
		{DefaultTarpit, 4, 2 * time.Second},
		{DefaultTarpit, 5, 4 * time.Second},
		{DefaultTarpit, 6, 5 * time.Second},
		{DefaultTarpit, 1 << 40, 5 * time.Second},
		{Tarpit{}, 100, 0},
		{Tarpit{Start: 0, Base: time.Second, Max: 8 * time.Second}, 1, time.Second},
		{Tarpit{Start: 0, Base: time.Second, Max: 8 * time.Second}, 0, 0},
		{Tarpit{Start: 2, Base: 500 * time.Millisecond, Max: 3 * time.Second}, 4, 2 * time.Second},
		{Tarpit{Start: 2, Base: 500 * time.Millisecond, Max: 3 * time.Second}, 9, 3 * time.Second},
		{Tarpit{Start: 1, Base: time.Second}, 50, 5 * time.Second}, // zero Max: 5s
	}
	for _, tt := range tests {
		if got := tt.t.Delay(tt.failures); got != tt.want {
			t.Errorf("%+v.Delay(%d) = %v, want %v", tt.t, tt.failures, got, tt.want)
		}
	}
}

// TestTarpitProgression checks the statuses Dovecot sees as failures grow.
func TestTarpitProgression(t *testing.T) {
	g := newFakeGuard()
	log, _ := testLogger(t)
	s := &Server{Guard: g, Log: log, Tarpit: Tarpit{Start: 3, Base: 700 * time.Millisecond, Max: 5 * time.Second}}
	want := []int{0, 0, 0, 1, 2, 3, 5, 5, 5}
	var got []int
	for i := range want {
		body := reqBody("192.0.2.9", "alice", fmt.Sprint("s", i))
		_, out := post(s, "allow", body)
		got = append(got, decodeReply(t, out).Status)
		post(s, "report", reqBody("192.0.2.9", "alice", fmt.Sprint("s", i), "success", false, "policy_reject", false))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("statuses %v, want %v", got, want)
	}
}

func TestReport(t *testing.T) {
	tests := []struct {
		name    string
		extra   []any
		call    string
		outcome string
	}{
		{"failure", []any{"success", false, "policy_reject", false}, "fail 192.0.2.1 alice imap 0abc", "failure"},
		{"success", []any{"success", true, "policy_reject", false}, "succeed 192.0.2.1 alice", "success"},
		{"refused by us", []any{"success", false, "policy_reject", true}, "", "ignored"},
		{"2.4 wrong password", []any{"success", false, "policy_reject", false, "fail_type", "credentials"}, "fail 192.0.2.1 alice imap 0abc", "failure"},
		{"2.4 unknown user", []any{"success", false, "policy_reject", false, "fail_type", "account"}, "fail 192.0.2.1 alice imap 0abc", "failure"},
		{"2.4 disabled", []any{"success", false, "policy_reject", false, "fail_type", "disabled"}, "", "ignored"},
		{"2.4 internal", []any{"success", false, "policy_reject", false, "fail_type", "internal"}, "", "ignored"},
		{"2.4 expired", []any{"success", false, "policy_reject", false, "fail_type", "expired"}, "", "ignored"},
		{"2.4 policy", []any{"success", false, "policy_reject", true, "fail_type", "policy"}, "", "ignored"},
		{"2.4 policy without policy_reject", []any{"success", false, "policy_reject", false, "fail_type", "policy"}, "", "ignored"},
		{"2.4 unknown fail_type still counts", []any{"success", false, "policy_reject", false, "fail_type", "mfa"}, "fail 192.0.2.1 alice imap 0abc", "failure"},
		{"2.4 success, empty fail_type", []any{"success", true, "policy_reject", false, "fail_type", ""}, "succeed 192.0.2.1 alice", "success"},
		{"2.4 success wins over a fail_type", []any{"success", true, "fail_type", "credentials"}, "succeed 192.0.2.1 alice", "success"},
		{"long pwhash bounded", []any{"success", false, "pwhash", strings.Repeat("f", 200)},
			"fail 192.0.2.1 alice imap " + boundHash(strings.Repeat("f", 200)), "failure"},
		{"protocol normalized", []any{"success", false, "protocol", "POP3S"}, "fail 192.0.2.1 alice pop3 0abc", "failure"},
		{"unknown protocol", []any{"success", false, "protocol", "lmtp"}, "fail 192.0.2.1 alice other 0abc", "failure"},
		{"nested attributes ignored", []any{"success", false, "attrs", map[string]string{"cos": "gold"}}, "fail 192.0.2.1 alice imap 0abc", "failure"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newFakeGuard()
			m := &fakeMetrics{}
			log, buf := testLogger(t)
			s := &Server{Guard: g, Metrics: m, Log: log}
			code, body := post(s, "report", reqBody("192.0.2.1", "alice", "s", tt.extra...))
			if code != 200 || body != `{"status":0,"msg":""}` {
				t.Errorf("reply %d %s", code, body)
			}
			calls := strings.Join(g.takeCalls(), "; ")
			if calls != tt.call {
				t.Errorf("guard calls %q, want %q", calls, tt.call)
			}
			if got := m.all(); got != tt.outcome {
				t.Errorf("metrics %q, want %q", got, tt.outcome)
			}
			if strings.Contains(buf.String(), "0abc") {
				t.Errorf("pwhash logged: %s", buf.String())
			}
			if warned := strings.Contains(buf.String(), "unknown fail_type"); warned != strings.Contains(tt.name, "unknown fail_type") {
				t.Errorf("warning about an unknown fail_type: %v, log %s", warned, buf.String())
			}
		})
	}
}

func TestRefuse(t *testing.T) {
	log, _ := testLogger(t)
	s := &Server{Guard: newFakeGuard("2001:db8::1"), Log: log, RejectMsg: "Go away\r\nA1 OK"}
	_, body := post(s, "allow", reqBody("2001:db8::1", "alice", "s"))
	if got, want := decodeReply(t, body), (Reply{Status: -1, Msg: "Go away A1 OK"}); got != want {
		t.Errorf("reply %+v, want %+v", got, want)
	}
	// An IPv4-mapped address is the IPv4 client.
	s2 := &Server{Guard: newFakeGuard("192.0.2.1"), Log: log}
	_, body = post(s2, "allow", reqBody("::ffff:192.0.2.1", "alice", "s"))
	if got := decodeReply(t, body); got.Status != -1 || got.Msg != DefaultRejectMsg {
		t.Errorf("mapped address: %+v", got)
	}
}

func TestFailMode(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	guards := []struct {
		name string
		g    Guard
	}{
		{"erroring", errGuard{}},
		{"blocking", blockGuard{}},
		{"ignoring ctx", blockGuard{ignoreCtx: true, release: release}},
		{"panicking", panicGuard{}},
	}
	for _, gg := range guards {
		for _, open := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s open=%v", gg.name, open), func(t *testing.T) {
				m := &fakeMetrics{}
				log, _ := testLogger(t)
				s := &Server{Guard: gg.g, FailOpen: open, Timeout: 50 * time.Millisecond, Metrics: m, Log: log}
				start := time.Now()
				code, body := post(s, "allow", reqBody("192.0.2.1", "alice", "s"))
				if d := time.Since(start); d > time.Second {
					t.Errorf("answered after %v, want about Timeout", d)
				}
				want, outcome := Reply{}, "store-error, fail-open"
				if !open {
					want, outcome = Reply{Status: -1, Msg: DefaultTempFailMsg}, "store-error, fail-closed"
				}
				if got := decodeReply(t, body); code != 200 || got != want {
					t.Errorf("allow: %d %+v, want 200 %+v", code, got, want)
				}
				code, body = post(s, "report", reqBody("192.0.2.1", "alice", "s", "success", false))
				if code != 200 || body != `{"status":0,"msg":""}` {
					t.Errorf("report: %d %s", code, body)
				}
				outcome += ", store-error, error"
				if got := m.all(); got != outcome {
					t.Errorf("metrics %q, want %q", got, outcome)
				}
			})
		}
	}
}

// TestSlots checks that requests waiting for a guard slot longer than
// Timeout are answered per FailOpen.
func TestSlots(t *testing.T) {
	release := make(chan struct{})
	log, _ := testLogger(t)
	s := &Server{Guard: blockGuard{ignoreCtx: true, release: release}, MaxConcurrent: 1, Timeout: 30 * time.Millisecond, Log: log}
	post(s, "allow", reqBody("192.0.2.1", "alice", "a")) // holds the only slot
	_, body := post(s, "allow", reqBody("192.0.2.1", "alice", "b"))
	if got := decodeReply(t, body); got.Status != -1 || got.Msg != DefaultTempFailMsg {
		t.Errorf("no slot, fail closed: %+v", got)
	}
	close(release)
}

func TestNormalizeProtocol(t *testing.T) {
	for in, want := range map[string]string{
		"imap": "imap", "IMAP": "imap", "pop3": "pop3", "smtp": "smtp", "submission": "submission",
		"sieve": "sieve", "managesieve": "sieve", "lmtp": "other", "": "other", "doveadm": "other",
	} {
		if got := NormalizeProtocol(in); got != want {
			t.Errorf("NormalizeProtocol(%q) = %q, want %q", in, got, want)
		}
	}
}

// Dovecot hanging up (its own timeout) while the guard works is no store
// error: nothing is counted or logged as one.
func TestClientGoneIsNotStoreError(t *testing.T) {
	for _, cmd := range []string{"allow", "report"} {
		m := &fakeMetrics{}
		s := &Server{Guard: blockGuard{}, FailOpen: true, Timeout: 10 * time.Second, Metrics: m, Log: discardLogger()}
		body := `{"login":"a@example.org","remote":"192.0.2.9","protocol":"imap","success":false,"policy_reject":false}`
		ctx, cancel := context.WithCancel(context.Background())
		r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/?command="+cmd, strings.NewReader(body))
		w := httptest.NewRecorder()
		done := make(chan struct{})
		go func() { s.ServeHTTP(w, r); close(done) }()
		cancel()
		<-done
		if got := m.all(); strings.Contains(got, "store-error") || !strings.Contains(got, VerdictGone) {
			t.Errorf("%s with the client gone: metrics %q, want %q and no store-error", cmd, got, VerdictGone)
		}
	}
}
