package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mailguard/mailguard/guard"
	"github.com/mailguard/mailguard/store/memstore"
)

// BenchmarkCheck is one GET /v1/check through the handler (no network):
// token lookup, parameters, guard.CheckFrom on the embedded store.
func BenchmarkCheck(b *testing.B) {
	st, err := memstore.Open(memstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	g, err := guard.New(st, guard.Config{Jails: []guard.Jail{roundcubeJail}})
	if err != nil {
		b.Fatal(err)
	}
	toks, err := ParseTokens(strings.NewReader(tokensText))
	if err != nil {
		b.Fatal(err)
	}
	h := (&Server{Guard: g, Tokens: toks}).Handler()
	req := httptest.NewRequest(http.MethodGet, "/v1/check?ip=198.51.100.7", nil)
	req.Header.Set("Authorization", "Bearer "+checkToken)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusNoContent {
			b.Fatalf("check = %d", w.Code)
		}
	}
}
