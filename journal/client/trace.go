package client

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/metrics"
)

// An append's way through the client, stage by stage (Future.Trace): the
// stages of the copy whose acknowledgement completed the ack quorum add
// up to the append's latency, so a slow p99 can be pinned on a hop.
//
//	Appended  AppendAsync called
//	Taken     the writer's loop took it from its mailbox and queued its copies for their bookies
//	Sent      the bookie stream's goroutine handed the message carrying that copy to gRPC
//	Answered  the message carrying its answer arrived on the stream
//	Quorum    the loop handled that answer: Qa copies acknowledged
//	Acked     acknowledged (every lower entry too): Done closed
//
// The stamps are nanoseconds of the monotonic clock since traceEpoch, kept
// in the Future (one clock read per append and per loop turn, two per
// stream message: a few tens of ns per append).

// traceEpoch is the origin of the stamps.
var traceEpoch = time.Now()

// nanotime reads the monotonic clock (time.Since reads only that one).
func nanotime() int64 { return int64(time.Since(traceEpoch)) }

// stamp converts t (zero: not known) to a stamp (0).
func stamp(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return int64(t.Sub(traceEpoch))
}

// AddTrace is when an acknowledged append passed each stage (see
// Future.Trace). A zero time is a stage not observed: the ack quorum's
// stages of an entry whose acknowledgements were not all seen by this
// writer (resent after an ensemble change, or acknowledged by a close).
type AddTrace struct {
	Appended time.Time // AppendAsync called
	Taken    time.Time // the writer's loop took the append and queued its copies
	Sent     time.Time // the copy that completed the ack quorum was handed to gRPC
	Answered time.Time // that copy's answer arrived on its stream
	Quorum   time.Time // the loop handled that answer
	Acked    time.Time // acknowledged: every lower entry acknowledged too
}

// Stage names, in order: the durations between consecutive AddTrace
// times, as Stages returns them and the quire_journal_client_add_stage_seconds
// histogram labels them.
var StageNames = [5]string{
	"mailbox", // Appended → Taken: the hop to the writer's loop
	"send",    // Taken → Sent: the hop to the bookie stream's goroutine, and its linger
	"stream",  // Sent → Answered: gRPC both ways and the bookie (its add p99 is the bookie's quire_bookie_add_seconds)
	"answer",  // Answered → Quorum: the answer's hop back to the writer's loop
	"order",   // Quorum → Acked: waiting for lower entries (LAC order)
}

// Stages returns the durations between consecutive stages (StageNames),
// and false if a stage was not observed.
func (t AddTrace) Stages() ([5]time.Duration, bool) {
	ts := [6]time.Time{t.Appended, t.Taken, t.Sent, t.Answered, t.Quorum, t.Acked}
	var d [5]time.Duration
	for i := range d {
		if ts[i].IsZero() || ts[i+1].IsZero() {
			return d, false
		}
		d[i] = ts[i+1].Sub(ts[i])
	}
	return d, true
}

// trace holds a Future's stamps (0: not observed).
type trace struct {
	appended, taken, sent, answered, quorum, acked int64
	acks                                           int32 // acknowledgements counted towards the ack quorum
}

func (t *trace) export() AddTrace {
	at := func(ns int64) time.Time {
		if ns == 0 {
			return time.Time{}
		}
		return traceEpoch.Add(time.Duration(ns))
	}
	return AddTrace{at(t.appended), at(t.taken), at(t.sent), at(t.answered), at(t.quorum), at(t.acked)}
}

// stageMetrics is the client's quire_journal_client_add_stage_seconds
// histogram, observed for one acknowledged append in stageSample.
type stageMetrics struct {
	stages [5]prometheus.Observer
}

// stageSample: the stages of entries that are multiples of it are
// observed (a histogram observation per stage is a few tens of ns, on the
// writer's loop).
const stageSample = 8

func newStageMetrics(r prometheus.Registerer) *stageMetrics {
	if r == nil {
		return nil
	}
	h := metrics.Reuse(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: metrics.Namespace, Subsystem: "journal_client", Name: "add_stage_seconds",
		Help: "Appends acknowledged (one in 8), time spent in each stage: mailbox (to the writer's loop), send (to the bookie stream), " +
			"stream (gRPC and the bookie), answer (back to the loop), order (waiting for lower entries); they add up to the add latency.",
		Buckets: prometheus.ExponentialBuckets(10e-6, 2, 16), // 10 µs .. 330 ms
	}, []string{"stage"}))
	m := &stageMetrics{}
	for i, n := range StageNames {
		m.stages[i] = h.WithLabelValues(n)
	}
	return m
}

// observe records t's stages if they were all observed.
func (m *stageMetrics) observe(t *trace) {
	ts := [6]int64{t.appended, t.taken, t.sent, t.answered, t.quorum, t.acked}
	for _, x := range ts {
		if x == 0 {
			return
		}
	}
	for i, o := range m.stages {
		o.Observe(float64(ts[i+1]-ts[i]) / 1e9)
	}
}
