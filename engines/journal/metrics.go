package journal

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/metrics"
)

const subsystem = "journal_engine"

// engineMetrics are the engine's Prometheus metrics. Engines sharing a
// Registerer share the collectors.
type engineMetrics struct {
	appends       prometheus.Counter
	records       prometheus.Counter
	bytes         prometheus.Counter
	appendSeconds prometheus.Histogram
	failed        prometheus.Counter
	rolled        prometheus.Counter
	takeovers     prometheus.Counter
	deleted       prometheus.Counter
	entryReads    prometheus.Counter
	openShards    prometheus.Gauge

	offloadBytes    prometheus.Counter
	offloadLedgers  prometheus.Counter
	offloadLag      prometheus.Gauge
	offloadFailures prometheus.Counter
	offloadReads    prometheus.Counter
	offloadEntries  prometheus.Counter
}

func newMetrics(r prometheus.Registerer) *engineMetrics {
	counter := func(name, help string) prometheus.Counter {
		return metrics.Reuse(r, prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: subsystem, Name: name, Help: help}))
	}
	return &engineMetrics{
		appends: counter("appends_total", "Append calls acknowledged (one ledger entry each)."),
		records: counter("appended_records_total", "Records appended."),
		bytes:   counter("appended_bytes_total", "Payload bytes (key, value, headers) appended."),
		appendSeconds: metrics.Reuse(r, prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Subsystem: subsystem, Name: "append_duration_seconds",
			Help: "Latency of Append, until the ack quorum has the entry.", Buckets: metrics.LatencyBuckets,
		})),
		failed:     counter("append_failures_total", "Appends that failed at the ledger writer (the next append takes the shard over again)."),
		rolled:     counter("ledgers_rolled_total", "Ledgers closed because they reached a roll limit."),
		takeovers:  counter("takeovers_total", "Shard logs taken over by a new writer (fence and recover, new ledger)."),
		deleted:    counter("ledgers_deleted_total", "Ledgers deleted by Trim (whole ledgers below the low watermark)."),
		entryReads: counter("entry_reads_total", "Ledger entries read from bookies (cache misses)."),
		openShards: metrics.Reuse(r, prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: subsystem, Name: "open_shards", Help: "Shards currently open."})),

		offloadBytes:    counter("offloaded_bytes_total", "Bytes of closed ledgers offloaded to the object store (verified and recorded)."),
		offloadLedgers:  counter("offloaded_ledgers_total", "Closed ledgers offloaded to the object store."),
		offloadFailures: counter("offload_failures_total", "Offload passes of a shard that failed (retried at the next pass)."),
		offloadReads:    counter("offloaded_reads_total", "Offloaded ledgers read back from the object store (cache misses)."),
		offloadEntries:  counter("offload_entry_reads_total", "Ledger entries read from bookies to offload them (by the shard's writer; twice for the part of a ledger beyond the offload buffer)."),
		offloadLag: metrics.Reuse(r, prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: subsystem, Name: "offload_lag_seconds",
			Help: "Age of the oldest closed ledger not offloaded yet (since the offloader first saw it)."})),
	}
}
