package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Held bans of the blast-radius guard (safety.max_bans_per_minute).

// BanHeld counts a ban held back (guard.HoldMetrics).
func (r *Registry) BanHeld(jail string) { r.heldCounter().WithLabelValues(jail).Inc() }

// HeldReleased counts held bans released "drained", "confirmed" or
// "expired" (guard.HoldMetrics).
func (r *Registry) HeldReleased(how string, n int) {
	r.releasedCounter().WithLabelValues(how).Add(float64(n))
}

// WatchHeld exports mailguard_bans_held, the bans held back now
// (site-wide), read from held at scrape time.
func (r *Registry) WatchHeld(held func(ctx context.Context) (int, error)) {
	r.reg.MustRegister(&heldCollector{fn: held, desc: prometheus.NewDesc(
		"mailguard_bans_held", "Bans held back by the blast-radius guard now, site-wide (safety.max_bans_per_minute).", nil, nil)})
}

func (r *Registry) heldCounter() *prometheus.CounterVec {
	r.heldOnce.Do(r.initHeld)
	return r.held
}

func (r *Registry) releasedCounter() *prometheus.CounterVec {
	r.heldOnce.Do(r.initHeld)
	return r.released
}

func (r *Registry) initHeld() {
	r.held = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailguard_bans_held_total", Help: "Bans held back by the blast-radius guard on this node, by jail.",
	}, []string{"jail"})
	r.released = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mailguard_bans_released_total", Help: "Held bans released on this node: drained (the rate dropped), confirmed (mailguard confirm) or expired (dropped unapplied).",
	}, []string{"how"})
	for _, how := range []string{"drained", "confirmed", "expired"} {
		r.released.WithLabelValues(how)
	}
	r.reg.MustRegister(r.held, r.released)
}

type heldCollector struct {
	fn   func(ctx context.Context) (int, error)
	desc *prometheus.Desc
}

func (c *heldCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *heldCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	n, err := c.fn(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n))
}
