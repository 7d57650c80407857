package authhook

import "unicode/utf8"

// decodeFlat decodes the bodies Dovecot sends, a flat JSON object of the
// known attributes with plain string and boolean values, without
// encoding/json (whose reflection and validation pass cost ~8% of a
// request's CPU). It returns ok false for anything else: an unknown or
// differently-cased key (encoding/json matches keys case-insensitively), an
// escape sequence, a non-ASCII byte, a number, null, an object or an array,
// a value of the wrong type, malformed JSON. DecodeRequest then decodes the
// body with encoding/json, so that both paths give the same Request and
// errors (FuzzDecodeRequest compares them).
func decodeFlat(b []byte) (Request, bool) {
	type span struct {
		field    *string
		from, to int
	}
	var r Request
	var spans [10]span
	ns, size := 0, 0
	i := skipSpace(b, 0)
	if i == len(b) || b[i] != '{' {
		return Request{}, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return r, skipSpace(b, i+1) == len(b)
	}
	for {
		kFrom, kTo, ok := plainString(b, i)
		if !ok {
			return Request{}, false
		}
		i = skipSpace(b, kTo+1)
		if i == len(b) || b[i] != ':' {
			return Request{}, false
		}
		i = skipSpace(b, i+1)
		if i == len(b) {
			return Request{}, false
		}
		str, flag := r.field(b[kFrom:kTo])
		switch {
		case b[i] == '"' && str != nil:
			from, to, ok := plainString(b, i)
			if !ok || ns == len(spans) {
				return Request{}, false
			}
			spans[ns] = span{str, from, to}
			ns++
			size += to - from
			i = to + 1
		case flag != nil && hasWord(b, i, "true"):
			*flag = true
			i += len("true")
		case flag != nil && hasWord(b, i, "false"):
			*flag = false
			i += len("false")
		default:
			return Request{}, false
		}
		i = skipSpace(b, i)
		if i == len(b) {
			return Request{}, false
		}
		if b[i] == '}' {
			if skipSpace(b, i+1) != len(b) {
				return Request{}, false
			}
			break
		}
		if b[i] != ',' {
			return Request{}, false
		}
		i = skipSpace(b, i+1)
	}
	// One string holds every value: one allocation, not one per attribute.
	all := make([]byte, 0, size)
	for _, sp := range spans[:ns] {
		all = append(all, b[sp.from:sp.to]...)
	}
	s := string(all)
	for _, sp := range spans[:ns] {
		n := sp.to - sp.from
		*sp.field, s = s[:n], s[n:] // a repeated key: the last one wins, as in encoding/json
	}
	return r, true
}

// field returns the string or boolean field named by key (exactly as the
// json tags spell it), or nil, nil.
func (r *Request) field(key []byte) (*string, *bool) {
	switch string(key) {
	case "login":
		return &r.Login, nil
	case "pwhash":
		return &r.PasswordHash, nil
	case "remote":
		return &r.Remote, nil
	case "device_id":
		return &r.DeviceID, nil
	case "protocol":
		return &r.Protocol, nil
	case "session_id":
		return &r.SessionID, nil
	case "fail_type":
		return &r.FailType, nil
	case "success":
		return nil, &r.Success
	case "policy_reject":
		return nil, &r.PolicyReject
	case "tls":
		return nil, &r.TLS
	}
	return nil, nil
}

// plainString returns the bounds of the contents of the JSON string at
// b[i] (b[i] is '"'; b[to] is the closing '"') if it holds only printable
// ASCII and no escape.
func plainString(b []byte, i int) (from, to int, ok bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return i + 1, j, true
		case c == '\\' || c < 0x20 || c >= utf8.RuneSelf:
			return 0, 0, false
		}
	}
	return 0, 0, false
}

// hasWord reports whether b[i:] starts with the literal w followed by a
// delimiter (so that "truex" is no true).
func hasWord(b []byte, i int, w string) bool {
	if len(b)-i < len(w) || string(b[i:i+len(w)]) != w {
		return false
	}
	j := i + len(w)
	return j == len(b) || b[j] == ',' || b[j] == '}' || isSpace(b[j])
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// isSpace is JSON's whitespace.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
