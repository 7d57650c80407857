package main

import (
	"bufio"
	"bytes"
	"strconv"
	"testing"

	"github.com/mailguard/mailguard/policyd"
)

// The hand-written encoding of a request is the one Request.Set and
// WriteTo make (which check every attribute), for every varying attribute.
func TestPostfixEncode(t *testing.T) {
	for _, users := range []int{0, 3} {
		p, err := newPostfixLoad("tcp", "127.0.0.1:1", 10, users)
		if err != nil {
			t.Fatal(err)
		}
		r := p.base.Clone()
		r.Set("instance", "load.7")
		s := &postfixSession{p: p, req: r}
		for i := range 25 {
			want := r.Clone()
			want.Set("client_address", p.clients[i%len(p.clients)])
			want.Set("recipient", "rcpt"+strconv.Itoa(i)+"@example.org")
			want.Set("recipient_count", strconv.Itoa(s.n%100))
			if users > 0 {
				want.Set("sasl_method", "PLAIN")
				want.Set("sasl_username", p.users[i%len(p.users)])
			}
			var w bytes.Buffer
			if _, err := want.WriteTo(&w); err != nil {
				t.Fatal(err)
			}
			got := s.encode(nil, i)
			if !bytes.Equal(got, w.Bytes()) {
				t.Fatalf("users %d, request %d:\n%s\nwant\n%s", users, i, got, w.Bytes())
			}
			if _, err := policyd.ReadRequest(bufio.NewReader(bytes.NewReader(got)), policyd.Limits{}); err != nil {
				t.Fatalf("users %d, request %d does not read back: %v", users, i, err)
			}
			s.n++
		}
	}
}
