package api

import (
	_ "embed"
	"net/http"
)

// openapiJSON is the API's contract, served at /v1/openapi.json. A test
// holds its paths, methods and scopes equal to routes.
//
//go:embed openapi.json
var openapiJSON []byte

// OpenAPI returns the OpenAPI document (a copy).
func OpenAPI() []byte { return append([]byte(nil), openapiJSON...) }

func (s *Server) openapi(w http.ResponseWriter, r *http.Request, _ *token) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=3600")
	_, _ = w.Write(openapiJSON)
}
