package bookie

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/metrics"
)

// bookieMetrics are the quire_bookie_* metrics.
type bookieMetrics struct {
	adds          prometheus.Counter
	addErrors     prometheus.Counter
	addBytes      prometheus.Counter
	syncs         prometheus.Counter
	syncLatency   prometheus.Histogram
	groupLatency  prometheus.Histogram
	addLatency    prometheus.Histogram
	syncBytes     prometheus.Histogram
	groupSize     prometheus.Histogram
	fences        prometheus.Counter
	checkpoints   prometheus.Counter
	entryLogFiles prometheus.Gauge
	compactions   prometheus.Counter
	deletedLogs   prometheus.Counter
	failed        prometheus.Gauge
	// journalFiles counts journal files started, by how they were made
	// ready: "recycled" (a retired file reused) or "zero_filled" (a new
	// file written with zeros first: twice the disk writes while it runs).
	journalFiles *prometheus.CounterVec
}

func newMetrics(r prometheus.Registerer) *bookieMetrics {
	ns, sub := metrics.Namespace, "bookie"
	m := &bookieMetrics{
		adds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "adds_total", Help: "Entries added and acknowledged (journal synced)."}),
		addErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "add_errors_total", Help: "Adds that failed (fenced, closed, too large, journal failure)."}),
		addBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "add_bytes_total", Help: "Payload bytes of acknowledged adds."}),
		syncs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "journal_syncs_total", Help: "Journal group commits (write + fdatasync)."}),
		syncLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "journal_sync_seconds", Help: "Latency of a journal group write + fdatasync.",
			Buckets: metrics.LatencyBuckets}),
		groupLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "journal_group_seconds", Help: "Time from the first add of a journal group being queued to the group's acknowledgement (group wait, write, fdatasync): the bookie's add latency for the group's oldest add.",
			Buckets: metrics.LatencyBuckets}),
		addLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "add_seconds", Help: "Time from an add being handed to the bookie (AddEntry/AddEntries) to its acknowledgement.",
			Buckets: metrics.LatencyBuckets}),
		syncBytes: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "journal_sync_bytes", Help: "Bytes written per journal fdatasync.",
			Buckets: prometheus.ExponentialBuckets(256, 2, 16)}),
		groupSize: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "journal_group_records", Help: "Records per journal group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14)}),
		fences: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "fences_total", Help: "Ledger fences journaled."}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "checkpoints_total", Help: "Checkpoints completed."}),
		entryLogFiles: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "entry_log_files", Help: "Entry-log files on disk."}),
		compactions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "compactions_total", Help: "Entry logs compacted (live entries moved, file deleted)."}),
		deletedLogs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "entry_logs_deleted_total", Help: "Entry logs deleted whole because no entry in them was live."}),
		failed: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "failed", Help: "1 while the bookie refuses writes after a journal failure."}),
		journalFiles: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "journal_files_total", Help: "Journal files made ready, by how: recycled (a retired file reused) or zero_filled (a new file written with zeros first)."}, []string{"how"}),
	}
	m.adds = metrics.Reuse(r, m.adds)
	m.addErrors = metrics.Reuse(r, m.addErrors)
	m.addBytes = metrics.Reuse(r, m.addBytes)
	m.syncs = metrics.Reuse(r, m.syncs)
	m.syncLatency = metrics.Reuse(r, m.syncLatency)
	m.groupLatency = metrics.Reuse(r, m.groupLatency)
	m.addLatency = metrics.Reuse(r, m.addLatency)
	m.syncBytes = metrics.Reuse(r, m.syncBytes)
	m.groupSize = metrics.Reuse(r, m.groupSize)
	m.fences = metrics.Reuse(r, m.fences)
	m.checkpoints = metrics.Reuse(r, m.checkpoints)
	m.entryLogFiles = metrics.Reuse(r, m.entryLogFiles)
	m.compactions = metrics.Reuse(r, m.compactions)
	m.deletedLogs = metrics.Reuse(r, m.deletedLogs)
	m.failed = metrics.Reuse(r, m.failed)
	m.journalFiles = metrics.Reuse(r, m.journalFiles)
	return m
}
