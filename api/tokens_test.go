package api

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseTokens(t *testing.T) {
	const tok = "s3cret-token-abcdef"
	for _, tc := range []struct{ name, in, err string }{
		{"ok", "# c\n\n" + tok + " check,report web\n", ""},
		{"one field", tok + "\n", "line 1: want TOKEN SCOPE[,SCOPE...] [NAME], got 1 fields"},
		{"four fields", tok + " check a b\n", "line 1: want TOKEN SCOPE[,SCOPE...] [NAME], got 4 fields"},
		{"short", "short check\n", "line 1: token shorter than 16 characters (make one with openssl rand -hex 32)"},
		{"unknown scope", "# x\n" + tok + " check,root\n", `line 2: unknown scope "root" (report, check or admin)`},
		{"empty scope", tok + " check,\n", `line 1: unknown scope "" (report, check or admin)`},
		{"duplicate", tok + " check a\n" + tok + " admin b\n", "line 2: the same token as a"},
		{"none", "# nothing\n", "no tokens: every request would be refused"},
		{"long line", tok + " check " + strings.Repeat("n", 70<<10) + "\n", "line 1: bufio.Scanner: token too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTokens(strings.NewReader(tc.in))
			if tc.err == "" {
				if err != nil || got.Len() != 1 {
					t.Fatalf("ParseTokens = %v, %v", got, err)
				}
				tk, ok := got.lookup(tok)
				if !ok || tk.name != "web" || tk.source != "api:web" || !slices.Equal(tk.scopes, []Scope{ScopeCheck, ScopeReport}) {
					t.Errorf("lookup = %+v, %v", tk, ok)
				}
				if _, ok := got.lookup(tok[:len(tok)-1]); ok {
					t.Errorf("a prefix of the token was accepted")
				}
				return
			}
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParseTokens(%s) = %v, want %q", tc.name, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), tok) {
				t.Errorf("error shows the token: %v", err)
			}
		})
	}
}

// A token without a name is "line N", in logs and as the audit source of
// its checks.
func TestTokenDefaultName(t *testing.T) {
	const tok = "s3cret-token-abcdef"
	got, err := ParseTokens(strings.NewReader("# c\n" + tok + " check\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tk, ok := got.lookup(tok); !ok || tk.name != "line 2" || tk.source != "api:line 2" {
		t.Errorf("lookup = %+v, %v; want name line 2, source api:line 2", tk, ok)
	}
}

func TestLoadTokensMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(p, []byte("0123456789abcdef0123 check\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTokens(p); err != nil {
		t.Errorf("LoadTokens(0640) = %v", err)
	}
	for _, mode := range []os.FileMode{0o644, 0o602, 0o601} {
		os.Chmod(p, mode)
		_, err := LoadTokens(p)
		if err == nil || !strings.Contains(err.Error(), "other users may read it") || strings.Contains(err.Error(), "0123456789abcdef") {
			t.Errorf("LoadTokens(%04o) = %v, want refused without the token", mode, err)
		}
	}
	if _, err := LoadTokens(p + ".none"); err == nil {
		t.Errorf("LoadTokens(missing) = nil error")
	}
}

// The OpenAPI document describes exactly the routes, with their scopes.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]struct {
			Scope     string            `json:"x-mailguard-scope"`
			Responses map[string]any    `json:"responses"`
			Security  []json.RawMessage `json:"security"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	documented := map[string]string{}
	for path, ops := range doc.Paths {
		for method, op := range ops {
			documented[strings.ToUpper(method)+" "+path] = op.Scope
			if len(op.Responses) == 0 {
				t.Errorf("%s %s: no responses", method, path)
			}
			if op.Scope != "" {
				if _, ok := op.Responses["401"]; !ok {
					t.Errorf("%s %s needs a token but documents no 401", method, path)
				}
			}
		}
	}
	served := map[string]string{}
	for _, r := range routes {
		served[r.method+" "+r.path] = string(r.scope)
	}
	for k, v := range served {
		if d, ok := documented[k]; !ok || d != v {
			t.Errorf("route %s (scope %q) documented as %q, %v", k, v, d, ok)
		}
	}
	for k := range documented {
		if _, ok := served[k]; !ok {
			t.Errorf("openapi.json documents %s, which is not served", k)
		}
	}
	ts := start(t, nil)
	a := ts.do(t, "GET", "/v1/openapi.json", "", "")
	if a.status != 200 || string(a.body) != string(OpenAPI()) {
		t.Errorf("GET /v1/openapi.json = %d, not the embedded document", a.status)
	}
}
