package authhook

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

func addSeeds(f *testing.F) {
	files, _ := filepath.Glob("testdata/dovecot-2.3-*.json")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		var reqs []recorded
		if err := json.Unmarshal(data, &reqs); err != nil {
			f.Fatal(err)
		}
		for _, r := range reqs {
			f.Add(string(r.Body))
		}
	}
	for _, s := range []string{``, `{}`, `null`, `[]`, `{"remote":"::1","attrs":{"cos":"x"}}`,
		`{"remote":"1.2.3.4","login":1}`, `{"remote":"1.2.3.4","success":"true"}`, "{\"login\":\"\\ud800\"}",
		`{"login":"a","login":"b"}`, `{"LOGIN":"a"}`, ` { "success" : true , "tls":false } `, `{"success":truex}`,
		`{"login":"a",}`, `{"login":"a"} x`, `{"login":null}`, `{"remote":"1.2.3.4","success":false,"fail_type":"credentials"}`} {
		f.Add(s)
	}
}

// FuzzDecodeRequest checks that decoding never panics, that the fast path
// (decodeFlat) decodes what it accepts as encoding/json does, and that a
// decoded request survives a round trip through its JSON form.
func FuzzDecodeRequest(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, body string) {
		if fast, ok := decodeFlat([]byte(body)); ok {
			var want Request
			if err := json.Unmarshal([]byte(body), &want); err != nil || fast != want {
				t.Fatalf("decodeFlat(%q) = %+v; encoding/json: %+v, %v", body, fast, want, err)
			}
		}
		r, err := DecodeRequest([]byte(body))
		if err != nil {
			return
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", r, err)
		}
		r2, err := DecodeRequest(b)
		if err != nil {
			t.Fatalf("DecodeRequest(%s) after round trip: %v", b, err)
		}
		if r != r2 {
			t.Fatalf("round trip of %q: %+v, then %+v", body, r, r2)
		}
		if _, err := r.Addr(); err == nil && r.Remote == "" {
			t.Fatalf("Addr accepted an empty remote")
		}
	})
}

// TestDecodeFlatTakesDovecot checks that the bodies recorded from Dovecot
// 2.3 and 2.4 take the fast path.
func TestDecodeFlatTakesDovecot(t *testing.T) {
	files, _ := filepath.Glob("testdata/dovecot-*.json")
	if len(files) == 0 {
		t.Fatal("no recorded requests in testdata")
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var reqs []recorded
		if err := json.Unmarshal(data, &reqs); err != nil {
			t.Fatal(err)
		}
		for _, r := range reqs {
			if _, ok := decodeFlat(r.Body); !ok {
				t.Errorf("%s: decodeFlat(%s) fell back to encoding/json", file, r.Body)
			}
		}
	}
}

// FuzzHandler checks that any body gets 200 with an integer status or a 4xx
// with a JSON error, never a 5xx or a panic.
func FuzzHandler(f *testing.F) {
	addSeeds(f)
	s := &Server{Guard: newFakeGuard("127.0.0.3"), Tarpit: DefaultTarpit, MaxBody: 1 << 10, Log: discardLogger()}
	f.Fuzz(func(t *testing.T, body string) {
		for _, cmd := range []string{"allow", "report"} {
			code, out := post(s, cmd, body)
			switch code {
			case 200:
				var rep map[string]json.RawMessage
				if err := json.Unmarshal([]byte(out), &rep); err != nil {
					t.Fatalf("200 with %q: %v", out, err)
				}
				var status int
				if err := json.Unmarshal(rep["status"], &status); err != nil {
					t.Fatalf("status in %q is not an integer: %v", out, err)
				}
			case 400, 413:
				var e struct{ Error string }
				if err := json.Unmarshal([]byte(out), &e); err != nil || e.Error == "" {
					t.Fatalf("%d with %q: not a JSON error", code, out)
				}
			default:
				t.Fatalf("%s %q: code %d", cmd, body, code)
			}
		}
	})
}

// BenchmarkHandler measures the handler alone (no network) with a guard that
// answers at once: alternating allow and report, as Dovecot sends them.
func BenchmarkHandler(b *testing.B) {
	s := &Server{Guard: &benchGuard{}, Tarpit: DefaultTarpit, APIHeader: "Authorization: Bearer KEY", Log: discardLogger()}
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		id := n.Add(1)
		allow := reqBody(fmt.Sprintf("192.0.2.%d", id%250), "alice@example.org", fmt.Sprint("sess", id))
		report := strings.TrimSuffix(allow, "}") + `,"success":false,"policy_reject":false}`
		i := 0
		for pb.Next() {
			body, cmd := allow, "allow"
			if i%2 == 1 {
				body, cmd = report, "report"
			}
			i++
			r := httptest.NewRequest(http.MethodPost, "/?command="+cmd, strings.NewReader(body))
			r.Header.Set("Authorization", "Bearer KEY")
			w := httptest.NewRecorder()
			s.ServeHTTP(w, r)
			if w.Code != 200 {
				b.Fatalf("code %d %s", w.Code, w.Body)
			}
		}
	})
}
