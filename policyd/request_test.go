package policyd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
)

func attrsOf(r *Request) []string {
	var out []string
	for n, v := range r.All() {
		out = append(out, n+"="+v)
	}
	return out
}

func TestReadRequest(t *testing.T) {
	lim := Limits{MaxLineLen: 16, MaxAttrs: 3}
	tests := []struct {
		name string
		in   string
		want []string // nil: an error is expected
		err  error
	}{
		{"one", "a=b\n\n", []string{"a=b"}, nil},
		{"empty value", "a=\n\n", []string{"a="}, nil},
		{"equals in value", "a=b=c\n\n", []string{"a=b=c"}, nil},
		{"bare CR kept", "a=b\rc\r\n\n", []string{"a=b\rc\r"}, nil},
		{"NUL in value kept", "a=b\x00c\n\n", []string{"a=b\x00c"}, nil},
		{"utf-8", "s=jörg\n\n", []string{"s=jörg"}, nil},
		{"order kept", "z=1\na=2\nm=3\n\n", []string{"z=1", "a=2", "m=3"}, nil},
		{"line at limit", "a=" + strings.Repeat("x", 14) + "\n\n", []string{"a=" + strings.Repeat("x", 14)}, nil},
		{"line over limit", "a=" + strings.Repeat("x", 15) + "\n\n", nil, ErrLineTooLong},
		{"endless line", "a=" + strings.Repeat("x", 100), nil, ErrLineTooLong},
		{"attrs at limit", "a=1\nb=2\nc=3\n\n", []string{"a=1", "b=2", "c=3"}, nil},
		{"attrs over limit", "a=1\nb=2\nc=3\nd=4\n\n", nil, ErrTooManyAttrs},
		{"no equals", "a=1\nhello\n\n", nil, ErrMalformed},
		{"empty name", "=1\n\n", nil, ErrMalformed},
		{"space in name", "a b=1\n\n", nil, ErrMalformed},
		{"NUL in name", "a\x00=1\n\n", nil, ErrMalformed},
		{"CRLF terminator", "a=1\r\n\r\n", nil, ErrMalformed},
		{"repeated name", "a=1\na=2\n\n", nil, ErrMalformed},
		{"empty request", "\n", nil, ErrMalformed},
		{"clean EOF", "", nil, io.EOF},
		{"EOF mid-request", "a=1\n", nil, io.ErrUnexpectedEOF},
		{"EOF mid-line", "a=1\nb=", nil, ErrTruncated},
		{"binary junk", "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", nil, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ReadRequest(bufio.NewReader(strings.NewReader(tt.in)), lim)
			if tt.want == nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("ReadRequest(%q) = %v, %v; want error %v", tt.in, r, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadRequest(%q) = %v", tt.in, err)
			}
			if got := attrsOf(r); !slices.Equal(got, tt.want) {
				t.Errorf("ReadRequest(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestReadRequestMaxBytes(t *testing.T) {
	lim := Limits{MaxBytes: 10}
	for in, wantErr := range map[string]error{
		"a=1\nb=22\n\n":    nil, // 10 bytes
		"a=1\nb=222\n\n":   ErrTooLarge,
		"a=123456\n\n":     nil,
		"a=1234567\n\n":    ErrTooLarge,
		"a=1\nb=2\nc=33\n": ErrTooLarge, // no need to wait for the end
	} {
		_, err := ReadRequest(bufio.NewReader(strings.NewReader(in)), lim)
		if !errors.Is(err, wantErr) || (wantErr == nil) != (err == nil) {
			t.Errorf("ReadRequest(%q, MaxBytes 10) = %v, want %v", in, err, wantErr)
		}
	}
	// By default: lines each within the limit, too many bytes together.
	var big strings.Builder
	for i := range DefaultMaxAttrs - 1 {
		fmt.Fprintf(&big, "a%d=%s\n", i, strings.Repeat("x", 2000))
	}
	big.WriteString("\n")
	if _, err := ReadRequest(bufio.NewReader(strings.NewReader(big.String())), Limits{}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("%d bytes in %d lines: %v, want ErrTooLarge", big.Len(), DefaultMaxAttrs-1, err)
	}
}

func TestReadRequestStream(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("a=1\n\nb=2\nc=3\n\n"))
	var got [][]string
	for {
		r, err := ReadRequest(br, Limits{})
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, attrsOf(r))
	}
	if len(got) != 2 || got[0][0] != "a=1" || got[1][1] != "c=3" {
		t.Errorf("requests = %q, want [[a=1] [b=2 c=3]]", got)
	}
}

func TestDefaultLimits(t *testing.T) {
	long := "a=" + strings.Repeat("x", DefaultMaxLineLen-2) + "\n\n"
	if _, err := ReadRequest(bufio.NewReader(strings.NewReader(long)), Limits{}); err != nil {
		t.Errorf("line of DefaultMaxLineLen: %v", err)
	}
	if _, err := ReadRequest(bufio.NewReader(strings.NewReader("b"+long)), Limits{}); !errors.Is(err, ErrLineTooLong) {
		t.Errorf("line of DefaultMaxLineLen+1: %v, want ErrLineTooLong", err)
	}
	var many strings.Builder
	for i := range DefaultMaxAttrs + 1 {
		many.WriteString(strings.Repeat("a", i+1) + "=1\n")
	}
	many.WriteString("\n")
	if _, err := ReadRequest(bufio.NewReader(strings.NewReader(many.String())), Limits{}); !errors.Is(err, ErrTooManyAttrs) {
		t.Errorf("%d attributes: %v, want ErrTooManyAttrs", DefaultMaxAttrs+1, err)
	}
}

func TestRequestSetGet(t *testing.T) {
	var r Request
	r.Set("a", "1")
	r.Set("b", "2")
	r.Set("a", "3")
	if got := attrsOf(&r); !slices.Equal(got, []string{"a=3", "b=2"}) {
		t.Errorf("attrs = %q", got)
	}
	if r.Get("b") != "2" || r.Get("missing") != "" || r.Len() != 2 {
		t.Errorf("Get/Len wrong: %q %q %d", r.Get("b"), r.Get("missing"), r.Len())
	}
	c := r.Clone()
	c.Set("b", "x")
	if r.Get("b") != "2" {
		t.Error("Clone shares attributes")
	}
}

func TestWriteTo(t *testing.T) {
	tests := []struct {
		name  string
		attrs []string
		want  string
		err   error
	}{
		{"ok", []string{"a", "1", "b", "x=y\r"}, "a=1\nb=x=y\r\n\n", nil},
		{"empty", nil, "", ErrMalformed},
		{"newline in value", []string{"a", "1\n2"}, "", ErrMalformed},
		{"equals in name", []string{"a=b", "1"}, "", ErrMalformed},
		{"empty name", []string{"", "1"}, "", ErrMalformed},
		{"space in name", []string{"a b", "1"}, "", ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Request
			for i := 0; i < len(tt.attrs); i += 2 {
				r.attrs = append(r.attrs, attr{tt.attrs[i], tt.attrs[i+1]})
			}
			var b bytes.Buffer
			_, err := r.WriteTo(&b)
			if !errors.Is(err, tt.err) || b.String() != tt.want {
				t.Errorf("WriteTo(%q) = %q, %v; want %q, %v", tt.attrs, b.String(), err, tt.want, tt.err)
			}
		})
	}
}

func TestWriteReply(t *testing.T) {
	tests := []struct {
		in, want string
		err      bool
	}{
		{"DUNNO", "action=DUNNO\n\n", false},
		{"421 4.7.1 go away", "action=421 4.7.1 go away\n\n", false},
		{"421 x\r\n\r\naction=OK", "action=421 x    action=OK\n\n", false},
		{"REJECT a\x00b\tc\x7fd\x1be", "action=REJECT a b c d e\n\n", false},
		{"  \nDUNNO\n", "action=DUNNO\n\n", false},
		{"héllo", "action=héllo\n\n", false},
		{"\r\n", "", true},
		{"", "", true},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		err := WriteReply(&b, tt.in)
		if b.String() != tt.want || (err != nil) != tt.err {
			t.Errorf("WriteReply(%q) = %q, %v; want %q, error %v", tt.in, b.String(), err, tt.want, tt.err)
		}
	}
}

func TestReadReply(t *testing.T) {
	got, err := ReadReply(bufio.NewReader(strings.NewReader("action=DUNNO\n\n")), Limits{})
	if got != "DUNNO" || err != nil {
		t.Errorf("ReadReply = %q, %v; want DUNNO", got, err)
	}
	if _, err := ReadReply(bufio.NewReader(strings.NewReader("foo=bar\n\n")), Limits{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("ReadReply without action = %v, want ErrMalformed", err)
	}
}
