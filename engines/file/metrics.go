package file

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/metrics"
)

const subsystem = "file"

// engineMetrics are the engine's Prometheus metrics. Engines sharing a
// Registerer share the collectors.
type engineMetrics struct {
	appends        prometheus.Counter
	records        prometheus.Counter
	bytes          prometheus.Counter
	writes         prometheus.Counter
	fsyncs         prometheus.Counter
	fsyncSeconds   prometheus.Histogram
	syncBytes      prometheus.Histogram
	rolled         prometheus.Counter
	deleted        *prometheus.CounterVec
	truncations    prometheus.Counter
	truncatedBytes prometheus.Counter
	corruptShards  prometheus.Gauge
	failedShards   prometheus.Counter
	openShards     prometheus.Gauge

	offloadBytes    prometheus.Counter
	offloadSegments prometheus.Counter
	offloadLag      prometheus.Gauge
	offloadFailures prometheus.Counter
	offloadReadBack prometheus.Counter
}

func newMetrics(r prometheus.Registerer) *engineMetrics {
	counter := func(name, help string) prometheus.Counter {
		return metrics.Reuse(r, prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: subsystem, Name: name, Help: help}))
	}
	gauge := func(name, help string) prometheus.Gauge {
		return metrics.Reuse(r, prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: subsystem, Name: name, Help: help}))
	}
	return &engineMetrics{
		appends: counter("appends_total", "Append calls that succeeded."),
		records: counter("appended_records_total", "Records appended."),
		bytes:   counter("appended_bytes_total", "Payload bytes (key, value, headers) appended."),
		writes:  counter("writes_total", "Write calls to segment files (one per group commit)."),
		fsyncs:  counter("fsyncs_total", "fdatasync calls on segment files."),
		fsyncSeconds: metrics.Reuse(r, prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Subsystem: subsystem, Name: "fsync_duration_seconds",
			Help: "Latency of fdatasync on segment files.", Buckets: metrics.LatencyBuckets,
		})),
		syncBytes: metrics.Reuse(r, prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Subsystem: subsystem, Name: "sync_bytes",
			Help: "Bytes made durable by one fdatasync (group commit size).", Buckets: prometheus.ExponentialBuckets(512, 2, 18),
		})),
		rolled: counter("segments_rolled_total", "Segments sealed because they reached SegmentBytes or SegmentAge."),
		deleted: metrics.Reuse(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: subsystem, Name: "segments_deleted_total",
			Help: "Sealed segments deleted, by reason (retention or trim).",
		}, []string{"reason"})),
		truncations:    counter("recovery_truncations_total", "Torn segment tails truncated by recovery."),
		truncatedBytes: counter("recovery_truncated_bytes_total", "Bytes removed by recovery truncations."),
		corruptShards:  gauge("corrupt_shards", "Shards that failed to open because of corrupt data."),
		failedShards:   counter("failed_shards_total", "Shards that stopped accepting writes after an I/O error."),
		openShards:     gauge("open_shards", "Shards currently open."),

		offloadBytes: metrics.Reuse(r, prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "offload", Name: "bytes_total",
			Help: "Bytes of sealed segments offloaded to the object store (verified and recorded)."})),
		offloadSegments: metrics.Reuse(r, prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "offload", Name: "segments_total",
			Help: "Sealed segments offloaded to the object store."})),
		offloadLag: metrics.Reuse(r, prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: "offload", Name: "lag_seconds",
			Help: "Age of the oldest sealed segment not offloaded yet (since the offloader first saw it sealed)."})),
		offloadFailures: metrics.Reuse(r, prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "offload", Name: "failures_total",
			Help: "Segment offloads that failed (each is retried with backoff)."})),
		offloadReadBack: metrics.Reuse(r, prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "offload", Name: "readback_total",
			Help: "Segment offloads verified by reading the objects back because the store could not check the CRC-32C sent with the PUT."})),
	}
}
