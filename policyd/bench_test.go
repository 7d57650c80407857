package policyd

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"
)

// BenchmarkServer measures whole round trips of the recorded request over 32
// persistent TCP connections against a fake Guard: the cost of policyd alone.
func BenchmarkServer(b *testing.B) {
	base, err := ReadRequest(bufio.NewReader(bytes.NewReader(recorded(b))), Limits{})
	if err != nil {
		b.Fatal(err)
	}
	addr := start(b, &Server{Guard: newFake()}, "tcp")
	const conns = 32
	b.SetParallelism((conns + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ReportAllocs()
	t0 := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		r := base.Clone()
		r.Set("sasl_username", "alice@example.org")
		var buf bytes.Buffer
		for i := 0; pb.Next(); i++ {
			r.Set("client_address", fmt.Sprintf("198.51.100.%d", i%250+1))
			r.Set("recipient_count", fmt.Sprint(i))
			buf.Reset()
			r.WriteTo(&buf)
			if _, err := c.Write(buf.Bytes()); err != nil {
				b.Error(err)
				return
			}
			if a, err := ReadReply(br, Limits{}); err != nil || a != ActionDunno {
				b.Errorf("reply %q, %v", a, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "req/s")
}

// BenchmarkReadRequest measures decoding the recorded request.
func BenchmarkReadRequest(b *testing.B) {
	raw := recorded(b)
	rd := bytes.NewReader(raw)
	br := bufio.NewReader(rd)
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		rd.Reset(raw)
		br.Reset(rd)
		if _, err := ReadRequest(br, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadRequestReused measures decoding the recorded request as a
// server connection does, reusing its scratch space and Request.
func BenchmarkReadRequestReused(b *testing.B) {
	raw := recorded(b)
	rd := bytes.NewReader(raw)
	br := bufio.NewReader(rd)
	var sc scratch
	var req Request
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		rd.Reset(raw)
		br.Reset(rd)
		if err := sc.read(br, Limits{}, &req); err != nil {
			b.Fatal(err)
		}
	}
}
