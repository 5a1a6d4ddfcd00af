// Package metrics holds Quire's Prometheus conventions: every metric is named
// quire_<component>_<what>_<unit>, components take a prometheus.Registerer in
// their Options (nil means "do not register", which tests use so that many
// instances can live in one process), and the node serves one registry with
// the Go runtime and process collectors on the admin port at /metrics.
package metrics

import (
	"errors"

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

// Register registers cs with r, ignoring a nil r. A collector equal to one
// already registered (an engine reopened in the same process) is not
// registered again; since the caller's collector is then not the exported
// one, a component that keeps counting into its collectors uses Reuse.
func Register(r prometheus.Registerer, cs ...prometheus.Collector) {
	for _, c := range cs {
		Reuse(r, c)
	}
}

// Reuse registers c with r and returns the collector to count into: c, or
// the equal collector registered earlier (a component reopened in the same
// process keeps counting into the same series). A nil r registers nothing.
// Any other registration error panics: it is a programming error.
func Reuse[C prometheus.Collector](r prometheus.Registerer, c C) C {
	if r == nil {
		return c
	}
	if err := r.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}

// LatencyBuckets are histogram buckets in seconds for I/O latencies from
// 50µs to ~6s.
var LatencyBuckets = prometheus.ExponentialBuckets(50e-6, 2, 18)
