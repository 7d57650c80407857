package main

import (
	"bufio"
	"bytes"
	"strconv"
	"testing"
	"time"

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

func TestNextDeadline(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	end := at(30*time.Second + grace) // a 30 s run: its requests' I/O ends at 31 s
	for _, c := range []struct {
		name     string
		now      time.Duration // since t0
		last     time.Time
		capped   bool
		want     time.Time
		wantMove bool
	}{
		{"first request", 0, time.Time{}, true, at(ioTimeout), true},
		{"within the slack", 900 * time.Millisecond, at(ioTimeout), true, at(900*time.Millisecond + ioTimeout), false},
		{"past the slack", 1100 * time.Millisecond, at(ioTimeout), true, at(1100*time.Millisecond + ioTimeout), true},
		// The run's end caps the deadline less than a second after the one
		// set (at 25 s, for 30 s): it must still move there, or a request in
		// flight at 30 s is cut then and counted as the server's error.
		{"capped near the last", 26500 * time.Millisecond, at(25*time.Second + ioTimeout), true, end, true},
		{"capped, already set", 26600 * time.Millisecond, end, true, end, false},
		{"capped earlier than the last", 26600 * time.Millisecond, end.Add(3 * time.Second), true, end, true},
		{"no run end", 26500 * time.Millisecond, at(26*time.Second + ioTimeout), false, at(26500*time.Millisecond + ioTimeout), false},
	} {
		got, move := nextDeadline(at(c.now), c.last, end, c.capped)
		if !got.Equal(c.want) || move != c.wantMove {
			t.Errorf("%s: nextDeadline = %v, %v; want %v, %v", c.name, got.Sub(t0), move, c.want.Sub(t0), c.wantMove)
		}
	}
}
