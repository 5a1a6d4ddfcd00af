package meta

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/metrics"
)

type serverMetrics struct {
	isLeader     prometheus.Gauge
	apply        prometheus.Histogram
	batchOps     prometheus.Histogram
	forwarded    prometheus.Counter
	leaseExpired prometheus.Counter
}

func newServerMetrics(s *Server) *serverMetrics {
	ns, sub := metrics.Namespace, "meta"
	m := &serverMetrics{
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "is_leader",
			Help: "1 while this node is the meta (Raft) leader."}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "apply_seconds",
			Help: "Time from proposing a write on the leader to its being applied.", Buckets: metrics.LatencyBuckets}),
		batchOps: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "write_batch_ops",
			Help: "Writes committed together in one Raft entry by this leader.", Buckets: prometheus.ExponentialBuckets(1, 4, 7)}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "forwarded_total",
			Help: "Requests (ops of a batch count one each) forwarded by this follower to the leader."}),
		leaseExpired: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "leases_expired_total",
			Help: "Leases this node expired as leader."}),
	}
	rev := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "revision",
		Help: "The store's revision on this node."}, func() float64 { return float64(s.fsm.revision()) })
	metrics.Register(s.opts.Registerer, m.isLeader, m.apply, m.batchOps, m.forwarded, m.leaseExpired, rev)
	return m
}

func (m *serverMetrics) leader(ok bool) {
	if ok {
		m.isLeader.Set(1)
	} else {
		m.isLeader.Set(0)
	}
}
