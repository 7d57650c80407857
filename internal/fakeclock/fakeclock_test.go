package fakeclock

import (
	"sync"
	"testing"
	"time"
)

// Add moves Now by exactly what was added, from any goroutine (run with
// -race).
func TestAdd(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	c := New(start)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				c.Add(time.Second)
				c.Now()
			}
		})
	}
	wg.Wait()
	if got, want := c.Now(), start.Add(400*time.Second); !got.Equal(want) {
		t.Errorf("Now() = %v, want %v", got, want)
	}
}
