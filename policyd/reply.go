package policyd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Actions a policy server may answer with; see access(5). Postfix adds its own
// "Client host rejected:"-style prefix to the text of a reject or defer.
const (
	// ActionDunno lets Postfix go on with the next restriction.
	ActionDunno = "DUNNO"
	// DefaultRejectAction refuses a banned client. A 421 reply makes
	// Postfix answer the SMTP command with it and then disconnect.
	DefaultRejectAction = "421 4.7.1 Too many failed attempts from your address, try again later"
	// DefaultDeferAction answers an authenticated sender over its recipient
	// rate limit: a temporary refusal of this recipient unless a later
	// restriction rejects it anyway.
	DefaultDeferAction = "DEFER_IF_PERMIT 4.7.1 Sending rate limit exceeded, try again later"
	// DefaultFailAction answers when the guard fails or is too slow and
	// FailOpen is false: DEFER_IF_PERMIT is Postfix's idiom for a deny-list
	// that failed temporarily. Mail that would be accepted is deferred (450
	// 4.3.0, the client retries), mail that a later restriction rejects is
	// still rejected, and the client stays connected.
	DefaultFailAction = "DEFER_IF_PERMIT 4.3.0 Policy service temporarily unavailable, try again later"
)

// errEmptyAction: nothing is left of an action once cleaned.
var errEmptyAction = errors.New("policyd: empty action")

// WriteReply writes action=ACTION and the empty line that ends a reply.
// Control characters in action (CR, LF, NUL, TAB, DEL, ...) become spaces and
// surrounding space is trimmed, so a reply is always exactly one line
// whatever text it carries; an action that is empty once cleaned is an error.
func WriteReply(w io.Writer, action string) error {
	b, err := appendReply(nil, action)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// appendReply appends the reply WriteReply writes to b.
func appendReply(b []byte, action string) ([]byte, error) {
	action = cleanAction(action)
	if action == "" {
		return b, errEmptyAction
	}
	b = append(b, "action="...)
	b = append(b, action...)
	return append(b, "\n\n"...), nil
}

// cleanAction replaces every control byte with a space and trims spaces.
// Bytes of multi-byte UTF-8 sequences are all >= 0x80 and kept.
func cleanAction(s string) string {
	dirty := false
	for i := 0; i < len(s); i++ {
		if isCtl(s[i]) {
			dirty = true
			break
		}
	}
	if dirty {
		b := []byte(s)
		for i, c := range b {
			if isCtl(c) {
				b[i] = ' '
			}
		}
		s = string(b)
	}
	return strings.TrimSpace(s)
}

func isCtl(c byte) bool { return c < ' ' || c == 0x7f }

// ReadReply reads a reply, as a Postfix SMTP server does: attribute lines up
// to an empty line, of which it returns the action. It is the client half of
// the codec, for tests and load tools.
func ReadReply(br *bufio.Reader, lim Limits) (string, error) {
	r, err := ReadRequest(br, lim)
	if err != nil {
		return "", err
	}
	for name, value := range r.All() {
		if name == "action" {
			return value, nil
		}
	}
	return "", fmt.Errorf("%w: reply without action", ErrMalformed)
}
