package s3

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/metrics"
)

const subsystem = "s3"

// engineMetrics are the engine's Prometheus metrics. Engines sharing a
// Registerer share the collectors.
type engineMetrics struct {
	appends        prometheus.Counter
	records        prometheus.Counter
	bytes          prometheus.Counter
	failedAppends  prometheus.Counter
	objects        prometheus.Counter
	objectBytes    prometheus.Histogram
	putSeconds     prometheus.Histogram
	commitSeconds  prometheus.Histogram
	gets           prometheus.Counter
	getBytes       prometheus.Counter
	cacheHits      prometheus.Counter
	deleted        *prometheus.CounterVec
	orphans        prometheus.Counter
	openShards     prometheus.Gauge
	failedShards   prometheus.Counter
	corruptObjects prometheus.Counter
}

func newMetrics(r prometheus.Registerer) *engineMetrics {
	counter := func(name, help string) prometheus.Counter {
		return metrics.Reuse(r, prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: subsystem, Name: name, Help: help}))
	}
	latency := func(name, help string) prometheus.Histogram {
		return metrics.Reuse(r, prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Subsystem: subsystem, Name: name, Help: help, Buckets: metrics.LatencyBuckets,
		}))
	}
	return &engineMetrics{
		appends:       counter("appends_total", "Append calls that succeeded."),
		records:       counter("appended_records_total", "Records appended."),
		bytes:         counter("appended_bytes_total", "Payload bytes (key, value, headers) appended."),
		failedAppends: counter("failed_appends_total", "Append calls that failed (object write or index commit)."),
		objects:       counter("objects_written_total", "Objects written (one per flush)."),
		objectBytes: metrics.Reuse(r, prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Subsystem: subsystem, Name: "object_bytes",
			Help: "Size of the objects written.", Buckets: prometheus.ExponentialBuckets(512, 2, 22),
		})),
		putSeconds:    latency("put_duration_seconds", "Latency of object PUTs."),
		commitSeconds: latency("index_commit_duration_seconds", "Latency of committing an object's index entry to meta."),
		gets:          counter("object_gets_total", "Objects fetched from the store by readers."),
		getBytes:      counter("object_get_bytes_total", "Bytes fetched from the store by readers."),
		cacheHits:     counter("read_cache_hits_total", "Reads served from the decoded-object cache."),
		deleted: metrics.Reuse(r, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: subsystem, Name: "objects_deleted_total",
			Help: "Objects deleted, by reason (retention, trim, delete).",
		}, []string{"reason"})),
		orphans:        counter("orphan_objects_deleted_total", "Objects without an index entry (a failed or interrupted append) deleted at open."),
		openShards:     metrics.Reuse(r, prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: subsystem, Name: "open_shards", Help: "Shards currently open."})),
		failedShards:   counter("failed_shards_total", "Shards that stopped accepting writes because an index commit's outcome could not be learned."),
		corruptObjects: counter("corrupt_objects_total", "Objects that failed their checksum or disagreed with the index when read."),
	}
}
