// Package metrics holds Quire's Prometheus conventions: every metric is named
// quire_<component>_<what>_<unit>, components take a prometheus.Registerer in
// their Options (nil means "do not register", which tests use so that many
// instances can live in one process), and the node serves one registry with
// the Go runtime and process collectors on the admin port at /metrics.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every Quire metric.
const Namespace = "quire"

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Register registers cs with r, ignoring a nil r. A collector that is already
// registered (an engine reopened in the same process) is reused silently.
func Register(r prometheus.Registerer, cs ...prometheus.Collector) {
	if r == nil {
		return
	}
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			if _, ok := err.(prometheus.AlreadyRegisteredError); !ok {
				panic(err)
			}
		}
	}
}

// LatencyBuckets are histogram buckets in seconds for I/O latencies from
// 50µs to ~6s.
var LatencyBuckets = prometheus.ExponentialBuckets(50e-6, 2, 18)
