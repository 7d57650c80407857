package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailguard/mailguard/internal/listen"
	"github.com/mailguard/mailguard/policyd"
)

type fakeGuard struct{ banned netip.Addr }

func (f fakeGuard) Check(_ context.Context, a netip.Addr, _ string) (string, int, error) {
	if a == f.banned {
		return "net:" + a.String() + "/32", 0, nil
	}
	return "", 0, nil
}
func (fakeGuard) Recipient(context.Context, netip.Addr, string) (bool, error) { return false, nil }

func serve(t *testing.T, addr string) string {
	t.Helper()
	l, err := listen.Listen(addr, policyd.DefaultSocketMode, "")
	if err != nil {
		t.Fatal(err)
	}
	s := &policyd.Server{Guard: fakeGuard{netip.MustParseAddr("192.0.2.1")}, Log: slog.New(slog.DiscardHandler)}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	if strings.HasPrefix(addr, "unix:") {
		return addr
	}
	return l.Addr().String()
}

func TestRun(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "unix:" + filepath.Join(t.TempDir(), "p.sock")} {
		target := serve(t, addr)
		var out, errOut bytes.Buffer
		code := run(context.Background(), []string{"-policy", target, "-conns", "4", "-requests", "1000", "-clients", "10", "-users", "3"}, &out, &errOut)
		if code != 0 {
			t.Fatalf("run = %d, stderr: %s", code, errOut.String())
		}
		for _, want := range []string{"1000 answered", "0 errors", "req/s", "p99", "421 100, DUNNO 900"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out.String())
			}
		}
	}
}

func TestRunDurationBound(t *testing.T) {
	target := serve(t, "127.0.0.1:0")
	var out, errOut bytes.Buffer
	t0 := time.Now()
	if code := run(context.Background(), []string{"-policy", target, "-conns", "2", "-duration", "200ms"}, &out, &errOut); code != 0 {
		t.Fatalf("run = %d: %s", code, errOut.String())
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("a 200ms run took %v", d)
	}
}

func TestRunRate(t *testing.T) {
	target := serve(t, "127.0.0.1:0")
	var out, errOut bytes.Buffer
	t0 := time.Now()
	if code := run(context.Background(), []string{"-policy", target, "-conns", "4", "-requests", "400", "-rate", "2000"}, &out, &errOut); code != 0 {
		t.Fatalf("run = %d: %s", code, errOut.String())
	}
	// Request 399 is due 199.5ms after the start.
	if d := time.Since(t0); d < 195*time.Millisecond || d > 3*time.Second {
		t.Errorf("400 requests at 2000 req/s took %v, want about 200ms", d)
	}
	for _, want := range []string{"400 answered", "open loop at 2000 req/s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestRefusesOtherTargets(t *testing.T) {
	for _, args := range [][]string{
		{"-policy", "192.0.2.1:10028"},
		{"-policy", "[2001:db8::1]:10028"},
		{"-policy", "mail.example.com:10028"},
		{"-policy", "inet:10.0.0.1:10028"},
		{"-policy", "unix:"},
		{"-duration", "1h"},
		{"-requests", "-1"},
		{"-conns", "0"},
		{"-rate", "-1"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("run(%q) = %d, want 2; stderr %q", args, code, errOut.String())
		}
	}
	for _, ok := range []string{"127.0.0.1:1", "[::1]:1", "inet:127.0.0.2:1", "localhost:1", "unix:/run/x.sock"} {
		if _, _, err := loopbackTarget(context.Background(), "-policy", ok); err != nil {
			t.Errorf("loopbackTarget(%q) = %v", ok, err)
		}
	}
}

func TestHistQuantiles(t *testing.T) {
	var h hist
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * 10 * time.Microsecond) // 10µs .. 10ms
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5 * time.Millisecond}, {0.9, 9 * time.Millisecond}, {0.99, 9900 * time.Microsecond}, {1, 10 * time.Millisecond}} {
		got := h.quantile(tt.q)
		if got < tt.want || float64(got) > float64(tt.want)*1.02 {
			t.Errorf("quantile(%v) = %v, want %v (+2%%)", tt.q, got, tt.want)
		}
	}
	if h.max != 10*time.Millisecond || h.quantile(0.001) != 10*time.Microsecond+time.Microsecond-1 {
		t.Errorf("max %v, q0.001 %v", h.max, h.quantile(0.001))
	}
	var empty hist
	if empty.quantile(0.5) != 0 {
		t.Error("empty histogram")
	}
	for _, d := range []time.Duration{0, time.Microsecond, 1023 * time.Microsecond, 1024 * time.Microsecond, time.Hour, 200 * 365 * 24 * time.Hour} {
		if b := bucket(d); b < 0 || b >= hBuckets || upper(b) < d {
			t.Errorf("bucket(%v) = %d, upper %v", d, b, upper(b))
		}
	}
}
