package policyd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"strings"
)

// Errors returned by ReadRequest (wrapped with detail; test with errors.Is).
// A server that gets one closes the connection: the stream cannot be trusted
// to be in step any more.
var (
	// ErrLineTooLong: a line is longer than Limits.MaxLineLen.
	ErrLineTooLong = errors.New("policyd: line too long")
	// ErrTooManyAttrs: a request has more than Limits.MaxAttrs attributes.
	ErrTooManyAttrs = errors.New("policyd: too many attributes")
	// ErrMalformed: a line is not name=value, a name is empty or holds a
	// control character or space, a name repeats, or the request is empty.
	ErrMalformed = errors.New("policyd: malformed request")
	// ErrTruncated: the stream ended or failed inside a request. EOF there
	// also matches io.ErrUnexpectedEOF; other read errors are wrapped too.
	ErrTruncated = errors.New("policyd: request cut short")
	// ErrTooLarge: a request is longer than Limits.MaxBytes.
	ErrTooLarge = errors.New("policyd: request too large")
)

// Defaults for a zero Limits.
const (
	// DefaultMaxLineLen is above Postfix's line_length_limit (2048), so a
	// long sender or recipient from an SMTP client cannot make us close the
	// connection (and so reach Postfix's default_action).
	DefaultMaxLineLen = 8192
	// DefaultMaxAttrs is about twice what Postfix 3.7 to 3.10 send (29 to 31).
	DefaultMaxAttrs = 64
)

// DefaultMaxBytes bounds a whole request, and so the memory one connection
// can hold (64 lines of 8 KiB would be 512 KiB). Postfix's attributes are
// each bounded by its line_length_limit (2048) or less, about 30 of them:
// a real request stays far below, typically under 1 KiB.
const DefaultMaxBytes = 64 << 10

// Limits bound what ReadRequest reads. A zero field means its default.
type Limits struct {
	MaxLineLen int // bytes per line, without the newline
	MaxAttrs   int // attributes per request
	MaxBytes   int // bytes per request, newlines included
}

func (l Limits) bytes() int {
	if l.MaxBytes <= 0 {
		return DefaultMaxBytes
	}
	return l.MaxBytes
}

func (l Limits) lineLen() int {
	if l.MaxLineLen <= 0 {
		return DefaultMaxLineLen
	}
	return l.MaxLineLen
}

func (l Limits) attrs() int {
	if l.MaxAttrs <= 0 {
		return DefaultMaxAttrs
	}
	return l.MaxAttrs
}

type attr struct{ name, value string }

// Request is one policy delegation request: name=value attributes in the
// order they were sent. The zero value is an empty request, ready for Set.
// A Request is not safe for concurrent modification.
type Request struct {
	attrs []attr
}

// Get returns the value of the named attribute, or "" if it is absent.
// Names are case-sensitive, as Postfix sends them (client_address, ...).
func (r *Request) Get(name string) string {
	for _, a := range r.attrs {
		if a.name == name {
			return a.value
		}
	}
	return ""
}

// Set sets the named attribute, replacing its value if present, appending
// it otherwise. Set does not validate: WriteTo does.
func (r *Request) Set(name, value string) {
	for i := range r.attrs {
		if r.attrs[i].name == name {
			r.attrs[i].value = value
			return
		}
	}
	r.attrs = append(r.attrs, attr{name, value})
}

// Len returns the number of attributes.
func (r *Request) Len() int { return len(r.attrs) }

// All yields the attributes in order.
func (r *Request) All() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		for _, a := range r.attrs {
			if !yield(a.name, a.value) {
				return
			}
		}
	}
}

// Clone returns a copy of r that shares nothing mutable with it.
func (r *Request) Clone() *Request {
	return &Request{attrs: append([]attr(nil), r.attrs...)}
}

// equalExcept reports whether r and o hold the same attributes in the same
// order, ignoring the attribute named skip.
func (r *Request) equalExcept(o *Request, skip string) bool {
	i, j := 0, 0
	for {
		for i < len(r.attrs) && r.attrs[i].name == skip {
			i++
		}
		for j < len(o.attrs) && o.attrs[j].name == skip {
			j++
		}
		if i == len(r.attrs) || j == len(o.attrs) {
			return i == len(r.attrs) && j == len(o.attrs)
		}
		if r.attrs[i] != o.attrs[j] {
			return false
		}
		i++
		j++
	}
}

// WriteTo writes r in the wire format (name=value lines and an empty line),
// as Postfix sends it. It fails with ErrMalformed, writing nothing, if r is
// empty or cannot be read back: a name that is empty or holds '=', a space
// or a control character, a value that holds a newline, or a repeated name.
func (r *Request) WriteTo(w io.Writer) (int64, error) {
	if len(r.attrs) == 0 {
		return 0, fmt.Errorf("%w: empty request", ErrMalformed)
	}
	var b strings.Builder
	seen := make(map[string]bool, len(r.attrs))
	for _, a := range r.attrs {
		if err := checkName(a.name); err != nil {
			return 0, err
		}
		if strings.IndexByte(a.name, '=') >= 0 || strings.IndexByte(a.value, '\n') >= 0 {
			return 0, fmt.Errorf("%w: attribute %q cannot be encoded", ErrMalformed, a.name)
		}
		if seen[a.name] {
			return 0, fmt.Errorf("%w: attribute %q repeated", ErrMalformed, a.name)
		}
		seen[a.name] = true
		b.WriteString(a.name)
		b.WriteByte('=')
		b.WriteString(a.value)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// checkName accepts what Postfix sends (lower-case words with underscores)
// and more, but no space or control character: binary junk fails here.
func checkName[T string | []byte](name T) error {
	if len(name) == 0 {
		return fmt.Errorf("%w: empty attribute name", ErrMalformed)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c == 0x7f {
			return fmt.Errorf("%w: control character or space in attribute name", ErrMalformed)
		}
	}
	return nil
}

// ReadRequest reads one request: name=value lines up to an empty line, as
// SMTPD_POLICY_README specifies. Lines end with LF only, as Postfix writes
// them; a value may hold any other byte (Postfix passes on what SMTP clients
// send, a bare CR included), which is why values are never rejected for
// their content. The first '=' separates name and value.
//
// At a clean end of stream (nothing read) it returns io.EOF, and other read
// errors as they are when nothing was read (an idle timeout). After that,
// errors wrap ErrTruncated, ErrLineTooLong, ErrTooManyAttrs, ErrTooLarge or
// ErrMalformed;
// the reader is then left at an undefined position.
func ReadRequest(br *bufio.Reader, lim Limits) (*Request, error) {
	sc := scratch{buf: make([]byte, 0, 1024)} // used once: start small
	req := new(Request)
	if err := sc.read(br, lim, req); err != nil {
		return nil, err
	}
	return req, nil
}

// span locates one attribute in scratch.buf: name buf[start:eq], value
// buf[eq+1:end].
type span struct{ start, eq, end int }

// scratch is the reading space one connection reuses from request to
// request, so that reading a request costs one allocation (the string its
// names and values slice) instead of growing a buffer and a span list anew.
// The zero value is ready to use.
type scratch struct {
	spans []span
	buf   []byte
}

// maxKeep bounds the buffer a scratch keeps between requests: a connection
// that once sent a huge request does not hold its memory while idle.
const maxKeep = 16 << 10

// read reads one request into req, reusing req's attribute slice; see
// ReadRequest for what it reads and returns. On error req is left empty.
func (sc *scratch) read(br *bufio.Reader, lim Limits, req *Request) error {
	maxLine, maxAttrs, maxBytes := lim.lineLen(), lim.attrs(), lim.bytes()
	clear(req.attrs) // drop the previous request's string
	req.attrs = req.attrs[:0]
	if cap(sc.buf) > maxKeep {
		sc.buf = nil
	}
	if sc.buf == nil {
		sc.buf = make([]byte, 0, 2048) // a Postfix 3.7 request is ~1.1 KiB
	}
	if sc.spans == nil {
		sc.spans = make([]span, 0, 32) // Postfix 3.7 to 3.10 send 29 to 31
	}
	sc.spans, sc.buf = sc.spans[:0], sc.buf[:0]
	for {
		spans := sc.spans
		start := len(sc.buf)
		var err error
		sc.buf, err = readLine(br, maxLine, sc.buf)
		buf, n := sc.buf, len(spans)
		if err != nil {
			if n == 0 && len(buf) == 0 && !errors.Is(err, ErrLineTooLong) {
				return err // nothing read: clean EOF, idle timeout, closed
			}
			if err == io.EOF {
				return fmt.Errorf("%w after %d attributes: %w", ErrTruncated, n, io.ErrUnexpectedEOF)
			}
			if errors.Is(err, ErrLineTooLong) {
				return fmt.Errorf("%w (attribute %d, limit %d)", err, n+1, maxLine)
			}
			return fmt.Errorf("%w after %d attributes: %w", ErrTruncated, n, err)
		}
		if len(buf)+n+1 > maxBytes { // n+1 newlines read so far
			return fmt.Errorf("%w (limit %d bytes)", ErrTooLarge, maxBytes)
		}
		line := buf[start:]
		if len(line) == 0 {
			if n == 0 {
				return fmt.Errorf("%w: empty request", ErrMalformed)
			}
			// One string for all names and values: they outlive the
			// buffer (a guard or a log may keep them).
			s := string(buf)
			req.attrs = slices.Grow(req.attrs, n)
			for _, sp := range spans {
				req.attrs = append(req.attrs, attr{s[sp.start:sp.eq], s[sp.eq+1 : sp.end]})
			}
			return nil
		}
		if n == maxAttrs {
			return fmt.Errorf("%w (limit %d)", ErrTooManyAttrs, maxAttrs)
		}
		eq := bytes.IndexByte(line, '=')
		if eq < 0 {
			return fmt.Errorf("%w: attribute %d has no '='", ErrMalformed, n+1)
		}
		name := line[:eq]
		if err := checkName(name); err != nil {
			return fmt.Errorf("attribute %d: %w", n+1, err)
		}
		for _, sp := range spans {
			if sp.eq-sp.start == len(name) && bytes.Equal(buf[sp.start:sp.eq], name) {
				return fmt.Errorf("%w: attribute %q repeated", ErrMalformed, name)
			}
		}
		sc.spans = append(spans, span{start, start + eq, len(buf)})
	}
}

// readLine appends the next line, without its LF, to buf. It never holds
// more than max+1 bytes of a line.
func readLine(br *bufio.Reader, max int, buf []byte) ([]byte, error) {
	start := len(buf)
	for {
		frag, err := br.ReadSlice('\n')
		if n := len(buf) - start + len(frag); n > max+1 || (err != nil && n > max) {
			return buf, ErrLineTooLong
		}
		buf = append(buf, frag...)
		switch err {
		case nil:
			return buf[:len(buf)-1], nil
		case bufio.ErrBufferFull:
			continue
		default:
			return buf, err
		}
	}
}
