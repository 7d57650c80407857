package guard

import (
	"fmt"
	"testing"
	"time"
)

func TestOnce(t *testing.T) {
	var o once
	t0 := time.Now()
	if !o.first("a", t0, time.Minute) {
		t.Fatal("first report of a: false")
	}
	if o.first("a", t0.Add(59*time.Second), time.Minute) {
		t.Fatal("a again within its period: true")
	}
	if !o.first("b", t0, time.Minute) {
		t.Fatal("first report of b: false")
	}
	if !o.first("a", t0.Add(time.Minute), time.Minute) {
		t.Fatal("a after its period: false")
	}
	o.max = 100
	for i := range 1000 {
		o.first(fmt.Sprint(i), t0, time.Hour)
	}
	if n := len(o.seen); n > o.max {
		t.Fatalf("once holds %d keys, max %d", n, o.max)
	}
}
