package policyd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzReadRequest checks, for any byte stream, that ReadRequest never panics,
// fails only with its documented errors, returns requests within the limits,
// and that a request read is written back (WriteTo) as exactly the bytes it
// was read from: the encoding is canonical, so it round-trips.
// Seeds: f.Add below and testdata/fuzz/FuzzReadRequest.
func FuzzReadRequest(f *testing.F) {
	f.Add(recorded(f))
	f.Add([]byte("a=1\n\nb=2\nc=3\n\n"))
	f.Add([]byte("a=b=c\n\n"))
	f.Add([]byte("a=\r\n\r\n"))
	f.Add([]byte("\n"))
	f.Add([]byte("a=1\na=2\n\n"))
	f.Add([]byte("a=1\nb"))
	f.Add([]byte("\x00\xff=\x01\n\n"))
	lim := Limits{MaxLineLen: 64, MaxAttrs: 32}
	f.Fuzz(func(t *testing.T, data []byte) {
		rd := bytes.NewReader(data)
		br := bufio.NewReaderSize(rd, 16) // small: lines span several buffers
		consumed := 0
		for range 64 {
			r, err := ReadRequest(br, lim)
			if err == io.EOF {
				if consumed != len(data) {
					t.Fatalf("io.EOF with %d of %d bytes consumed", consumed, len(data))
				}
				return
			}
			if err != nil {
				for _, known := range []error{ErrLineTooLong, ErrTooManyAttrs, ErrMalformed, ErrTruncated} {
					if errors.Is(err, known) {
						return
					}
				}
				t.Fatalf("ReadRequest: undocumented error %v", err)
			}
			if r.Len() == 0 || r.Len() > lim.MaxAttrs {
				t.Fatalf("request with %d attributes, limit %d", r.Len(), lim.MaxAttrs)
			}
			seen := map[string]bool{}
			for name, value := range r.All() {
				if seen[name] || checkName(name) != nil || strings.ContainsAny(name, "=") ||
					strings.Contains(value, "\n") || len(name)+1+len(value) > lim.MaxLineLen {
					t.Fatalf("bad attribute %q=%q", name, value)
				}
				seen[name] = true
			}
			var out bytes.Buffer
			if _, err := r.WriteTo(&out); err != nil {
				t.Fatalf("WriteTo of a request read: %v", err)
			}
			end := len(data) - rd.Len() - br.Buffered()
			if !bytes.Equal(out.Bytes(), data[consumed:end]) {
				t.Fatalf("WriteTo = %q, read from %q", out.Bytes(), data[consumed:end])
			}
			consumed = end
			r2, err := ReadRequest(bufio.NewReader(&out), lim)
			if err != nil || !r2.equalExcept(r, "") {
				t.Fatalf("reading back %q: %v", out.Bytes(), err)
			}
		}
	})
}

// FuzzWriteReply checks that a reply is always one action line and an empty
// line, whatever the action holds, and reads back as the cleaned action.
func FuzzWriteReply(f *testing.F) {
	f.Add("DUNNO")
	f.Add("421 4.7.1 go away\r\n\r\naction=OK\n\n")
	f.Add("\x00\t\x7f")
	f.Add("héllo\u2028")
	f.Fuzz(func(t *testing.T, action string) {
		var b bytes.Buffer
		if err := WriteReply(&b, action); err != nil {
			if cleanAction(action) != "" {
				t.Fatalf("WriteReply(%q) = %v", action, err)
			}
			return
		}
		out := b.String()
		body, ok := strings.CutSuffix(strings.TrimPrefix(out, "action="), "\n\n")
		if !ok || !strings.HasPrefix(out, "action=") || strings.IndexFunc(body, func(r rune) bool { return r < ' ' || r == 0x7f }) >= 0 {
			t.Fatalf("WriteReply(%q) wrote %q", action, out)
		}
		got, err := ReadReply(bufio.NewReader(&b), Limits{MaxLineLen: len(out)})
		if err != nil || got != cleanAction(action) {
			t.Fatalf("ReadReply(%q) = %q, %v", out, got, err)
		}
	})
}
