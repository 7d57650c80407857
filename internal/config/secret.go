package config

import (
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// Mask replaces a secret, or the secret part of a value, in what mailguard
// prints.
const Mask = "*****"

// How a secret key is masked (its field's `secret` tag):
const (
	secretValue  = "value"  // the whole value
	secretHeader = "header" // "Name: value": the name stays, the value is masked
	secretURL    = "url"    // the password of the URL's userinfo
)

// SecretKeys lists the keys whose values are secret, as patterns ("*" for a
// jail name). Masked and Redact mask exactly these.
func SecretKeys() []string {
	var out []string
	for _, k := range keys {
		if k.secret != "" {
			out = append(out, k.pattern)
		}
	}
	return out
}

// Masked returns c with every secret masked, for printing (check-config).
// An empty secret stays empty: it says that the secret is not set.
func (c Config) Masked() Config {
	m := c
	m.Jails = nil // no secret below jails; a copy keeps the caller's map safe
	if c.Jails != nil {
		m.Jails = make(map[string]Jail, len(c.Jails))
		for n, j := range c.Jails {
			m.Jails[n] = j
		}
	}
	maskStruct(reflect.ValueOf(&m).Elem())
	return m
}

func maskStruct(v reflect.Value) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f, fv := t.Field(i), v.Field(i)
		switch {
		case f.Type.Kind() == reflect.Struct:
			maskStruct(fv)
		case f.Type.Kind() == reflect.Map && f.Type.Elem().Kind() == reflect.Struct:
			iter := fv.MapRange()
			for iter.Next() {
				e := reflect.New(f.Type.Elem()).Elem()
				e.Set(iter.Value())
				maskStruct(e)
				fv.SetMapIndex(iter.Key(), e)
			}
		case f.Tag.Get("secret") != "" && f.Type.Kind() == reflect.String:
			fv.SetString(mask(f.Tag.Get("secret"), fv.String()))
		}
	}
}

// mask masks s, a value of a key whose secret tag is kind.
func mask(kind, s string) string {
	if s == "" {
		return ""
	}
	switch kind {
	case secretHeader:
		// As authhook reads it: the name before the first colon.
		name, _, ok := strings.Cut(s, ":")
		if !ok || !isToken(strings.TrimSpace(name)) {
			return Mask
		}
		return strings.TrimSpace(name) + ": " + Mask
	case secretURL:
		return maskURL(s)
	}
	return Mask
}

// maskURL masks the password of a URL's userinfo. When the URL does not
// parse, the whole userinfo (everything between "://" and the last "@") is
// masked: the password may be anywhere in it.
func maskURL(s string) string {
	at := strings.LastIndex(s, "@")
	if at < 0 {
		return s // no userinfo, no password
	}
	scheme, rest, ok := strings.Cut(s[:at], "://")
	if !ok {
		return Mask + s[at:]
	}
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if _, ok := u.User.Password(); !ok {
			return s // a user name alone
		}
		user, _, _ := strings.Cut(rest, ":")
		return scheme + "://" + user + ":" + Mask + s[at:]
	}
	return scheme + "://" + Mask + s[at:]
}

// isToken reports whether s is an HTTP header name.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}

// replacement is a text that shows a secret and what to print instead.
type replacement struct{ secret, masked string }

// secrets returns every text that would show a secret of c, longest first:
// the values (replaced by their masked form), their secret parts (a header's
// value, a URL's userinfo and password) and these as Go would quote them.
func (c Config) secrets() []replacement {
	var out []replacement
	add := func(s, masked string) {
		if strings.TrimSpace(s) == "" {
			return
		}
		out = append(out, replacement{s, masked})
		if q, qm := strconv.Quote(s), strconv.Quote(masked); q[1:len(q)-1] != s {
			out = append(out, replacement{q[1 : len(q)-1], qm[1 : len(qm)-1]})
		}
	}
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f, fv := t.Field(i), v.Field(i)
			kind := f.Tag.Get("secret")
			switch {
			case f.Type.Kind() == reflect.Struct:
				walk(fv)
			case f.Type.Kind() == reflect.Map && f.Type.Elem().Kind() == reflect.Struct:
				iter := fv.MapRange()
				for iter.Next() {
					walk(iter.Value())
				}
			case kind != "" && f.Type.Kind() == reflect.String:
				s := fv.String()
				if s == mask(kind, s) {
					continue // nothing secret in it (a URL without a password)
				}
				add(s, mask(kind, s))
				switch kind {
				case secretHeader:
					if _, val, ok := strings.Cut(s, ":"); ok {
						add(strings.TrimSpace(val), Mask)
					}
				case secretURL:
					info := s[:strings.LastIndex(s, "@")]
					if _, rest, ok := strings.Cut(info, "://"); ok {
						info = rest
					}
					add(info, Mask)
					if _, pw, ok := strings.Cut(info, ":"); ok {
						add(pw, Mask)
						if p, err := url.PathUnescape(pw); err == nil {
							add(p, Mask)
						}
					}
				}
			}
		}
	}
	walk(reflect.ValueOf(c))
	slices.SortStableFunc(out, func(a, b replacement) int { return len(b.secret) - len(a.secret) })
	return out
}

// Redact replaces every secret of c found in s by its masked form: for
// error messages from code that may echo what it was given (a Redis URL
// that does not parse, for one).
func (c Config) Redact(s string) string {
	for _, r := range c.secrets() {
		s = strings.ReplaceAll(s, r.secret, r.masked)
	}
	return s
}

// maskSetArg shows a malformed --set argument up to its first separator
// only: "store.redis.password:hunter2" must not echo the password.
func maskSetArg(arg string) string {
	if i := strings.IndexAny(arg, ":= \t"); i >= 0 {
		return arg[:i] + "…"
	}
	return arg
}
