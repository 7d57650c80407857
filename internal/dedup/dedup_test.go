package dedup

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	var l Limiter
	t0 := time.Unix(1_700_000_000, 0)
	steps := []struct {
		key            string
		at             time.Duration
		ok             bool
		wantSuppressed int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"a", 4 * time.Second, false, 0},
		{"b", 4 * time.Second, true, 0}, // keys are independent
		{"a", DefaultPeriod, true, 2},   // the two held back are counted
		{"a", DefaultPeriod + time.Second, false, 0},
		{"a", 3 * DefaultPeriod, true, 1},
		{"a", 5 * DefaultPeriod, true, 0},
	}
	for i, s := range steps {
		ok, n := l.Allow(s.key, t0.Add(s.at))
		if ok != s.ok || n != s.wantSuppressed {
			t.Errorf("step %d: Allow(%q, +%v) = %v, %d; want %v, %d", i, s.key, s.at, ok, n, s.ok, s.wantSuppressed)
		}
	}
	// A period per call.
	if ok, _ := l.AllowEvery("c", t0, time.Minute); !ok {
		t.Error("first c: held back")
	}
	if ok, _ := l.AllowEvery("c", t0.Add(59*time.Second), time.Minute); ok {
		t.Error("c within its minute: let through")
	}
	if ok, n := l.AllowEvery("c", t0.Add(time.Minute), time.Minute); !ok || n != 1 {
		t.Errorf("c after its minute: %v, %d; want true, 1", ok, n)
	}
}

func TestLimiterBounded(t *testing.T) {
	l := Limiter{Max: 100}
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 10_000 {
		l.AllowEvery(fmt.Sprint(i), t0, time.Hour)
		if n := l.Len(); n > l.Max {
			t.Fatalf("after %d keys the limiter holds %d, Max %d", i+1, n, l.Max)
		}
	}
}

// TestLimiterConcurrent: one line per period however many goroutines log,
// and every event is either let through or counted.
func TestLimiterConcurrent(t *testing.T) {
	var l Limiter
	t0 := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	allowed, counted := 0, 0
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				ok, n := l.Allow("k", t0.Add(time.Duration(g*1000+i)*time.Millisecond%(20*time.Second)))
				mu.Lock()
				if ok {
					allowed++
					counted += n
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ok, n := l.Allow("k", t0.Add(time.Hour))
	if !ok {
		t.Fatal("an hour later: held back")
	}
	if got := allowed + counted + n; got != 8000 {
		t.Errorf("let through %d + counted %d = %d, want 8000 (every event accounted for)", allowed, counted+n, got)
	}
}
