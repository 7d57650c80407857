package dedup

import (
	"fmt"
	"testing"
	"time"
)

func TestOnce(t *testing.T) {
	var o Once
	t0 := time.Now()
	if !o.First("a", t0, time.Minute) {
		t.Fatal("first report of a: false")
	}
	if o.First("a", t0.Add(59*time.Second), time.Minute) {
		t.Fatal("a again within its period: true")
	}
	if !o.First("b", t0, time.Minute) {
		t.Fatal("first report of b: false")
	}
	if !o.First("a", t0.Add(time.Minute), time.Minute) {
		t.Fatal("a after its period: false")
	}
	o.Max = 100
	for i := range 1000 {
		o.First(fmt.Sprint(i), t0, time.Hour)
	}
	if n := len(o.seen); n > o.Max {
		t.Fatalf("once holds %d keys, max %d", n, o.Max)
	}
}
