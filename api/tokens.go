package api

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Scope is what a token may do.
type Scope string

// Scopes, one per kind of caller.
const (
	ScopeReport Scope = "report" // POST /v1/events: a web app reporting logins
	ScopeCheck  Scope = "check"  // GET /v1/check: nginx auth_request, an app asking
	ScopeAdmin  Scope = "admin"  // /v1/bans: list, ban, unban
)

// Scopes returns the known scopes, in a new slice.
func Scopes() []Scope { return []Scope{ScopeReport, ScopeCheck, ScopeAdmin} }

// MinTokenLen is the shortest token accepted: 16 characters (openssl rand
// -hex 32 makes 64).
const MinTokenLen = 16

// Tokens are the bearer tokens the API accepts. A Tokens is read-only once
// made and safe for concurrent use. The tokens themselves are kept only as
// SHA-256 digests.
type Tokens struct {
	list []token
}

type token struct {
	sum    [sha256.Size]byte
	name   string
	source string // "api:" + name, the audit trail's source of its checks
	scopes []Scope
}

// LoadTokens reads a tokens file (see ParseTokens). A file that other users
// may read or write is refused: whoever reads a token can ban addresses.
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("api: tokens file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("api: tokens file: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		return nil, fmt.Errorf("api: tokens file %s has mode %04o: other users may read it; chmod o-rwx %s", path, perm, path)
	}
	t, err := ParseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("api: tokens file %s: %w", path, err)
	}
	return t, nil
}

// ParseTokens reads one token a line, `TOKEN SCOPE[,SCOPE...] [NAME]`; blank
// lines and lines starting with # are skipped. NAME (default "line N")
// names the token in logs and, as "api:NAME", is the audit trail's source
// of the refusals of its checks. Errors name the line, never the token.
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > 3 {
			return nil, fmt.Errorf("line %d: want TOKEN SCOPE[,SCOPE...] [NAME], got %d fields", n, len(f))
		}
		if len(f[0]) < MinTokenLen {
			return nil, fmt.Errorf("line %d: token shorter than %d characters (make one with openssl rand -hex 32)", n, MinTokenLen)
		}
		tk := token{sum: sha256.Sum256([]byte(f[0])), name: fmt.Sprintf("line %d", n)}
		if len(f) == 3 {
			tk.name = f[2]
		}
		tk.source = "api:" + tk.name
		for _, s := range strings.Split(f[1], ",") {
			sc := Scope(s)
			if !slices.Contains(Scopes(), sc) {
				return nil, fmt.Errorf("line %d: unknown scope %q (report, check or admin)", n, s)
			}
			if !slices.Contains(tk.scopes, sc) {
				tk.scopes = append(tk.scopes, sc)
			}
		}
		for _, o := range t.list {
			if o.sum == tk.sum {
				return nil, fmt.Errorf("line %d: the same token as %s", n, o.name)
			}
		}
		t.list = append(t.list, tk)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", n+1, err)
	}
	if len(t.list) == 0 {
		return nil, errors.New("no tokens: every request would be refused")
	}
	return t, nil
}

// Len returns the number of tokens.
func (t *Tokens) Len() int { return len(t.list) }

// lookup finds the token presented. It compares the presented token's
// digest with every token's, in constant time, without stopping at a match.
func (t *Tokens) lookup(presented string) (*token, bool) {
	sum := sha256.Sum256([]byte(presented))
	found := -1
	for i := range t.list {
		if subtle.ConstantTimeCompare(sum[:], t.list[i].sum[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return nil, false
	}
	return &t.list[found], true
}

func (tk *token) has(s Scope) bool { return slices.Contains(tk.scopes, s) }
