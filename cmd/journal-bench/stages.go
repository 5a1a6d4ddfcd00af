package main

import (
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/quiremq/quire/internal/hist"
	"github.com/quiremq/quire/journal/client"
)

// The add latency stage by stage: where the time between an append's
// scheduled time and the writer seeing it acknowledged goes. The stages
// of one append add up to its latency: the pacer's own lag (its writer
// goroutine woke late: a load generator's artefact, not the client's),
// admission (AppendAsync blocked while --inflight appends were
// unacknowledged: backpressure), the client's five (client.StageNames,
// from Future.Trace: the hops of the copy that completed the ack quorum,
// and the wait for lower entries) and the hop back to the writer. Compare
// stages with each other within a run; on a shared machine absolute
// figures move from one run to the next.
var benchStages = append(append([]string{"pacer", "admit"}, client.StageNames[:]...), "caller")

const nStages = len(client.StageNames) + 3

// stageSample: one measured append in stageSample keeps its stage vector,
// for the tail attribution (stageSummary.TailMeanMs).
const stageSample = 8

// stageStats collects the stages of measured appends; guarded by
// addStats.mu.
type stageStats struct {
	hists   [nStages]hist.Histogram
	samples []stageVec
	seen    uint64 // appends with every stage observed
	missed  uint64 // appends acknowledged with a stage not observed
}

// stageVec is one append's stages and total, in µs.
type stageVec struct {
	total  uint32
	stages [nStages]uint32
}

// traceStages returns the stages of an append scheduled at at, passed to
// AppendAsync at called, with trace tr, and seen acknowledged at seen;
// false if the client did not observe every stage.
func traceStages(at, called time.Time, tr client.AddTrace, seen time.Time) ([nStages]time.Duration, bool) {
	var d [nStages]time.Duration
	cs, ok := tr.Stages()
	if !ok {
		return d, false
	}
	d[0], d[1] = called.Sub(at), tr.Appended.Sub(called)
	copy(d[2:], cs[:])
	d[nStages-1] = seen.Sub(tr.Acked)
	return d, true
}

// record adds one measured append's stages; total is its latency.
func (s *stageStats) record(d [nStages]time.Duration, total time.Duration) {
	s.seen++
	var v stageVec
	for i, x := range d {
		s.hists[i].Record(x)
		v.stages[i] = us32(x)
	}
	if s.seen%stageSample == 0 {
		v.total = us32(total)
		s.samples = append(s.samples, v)
	}
}

func us32(d time.Duration) uint32 { return uint32(min(max(d.Microseconds(), 0), 1<<32-1)) }

// stageSummary is one stage in the JSON line's stages list.
type stageSummary struct {
	Stage string  `json:"stage"`
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	// TailMeanMs is the stage's mean over the slowest 1% of the sampled
	// appends (one in 8): the stage means add up to the tail's mean
	// latency, so the largest is where the p99 goes.
	TailMeanMs float64 `json:"tail_mean_ms"`
}

// summary returns the stages in order; nil if none was observed.
func (s *stageStats) summary() []stageSummary {
	if s.seen == 0 {
		return nil
	}
	tail := slices.Clone(s.samples)
	slices.SortFunc(tail, func(a, b stageVec) int { return int(int64(b.total) - int64(a.total)) })
	tail = tail[:max(1, len(tail)/100)]
	out := make([]stageSummary, nStages)
	for i := range out {
		var sum float64
		for _, v := range tail {
			sum += float64(v.stages[i])
		}
		out[i] = stageSummary{Stage: benchStages[i], P50Ms: ms(s.hists[i].Quantile(0.5)), P99Ms: ms(s.hists[i].Quantile(0.99)),
			TailMeanMs: sum / float64(len(tail)) / 1000}
	}
	return out
}

// printStages writes the stages line of the summary.
func printStages(w io.Writer, stages []stageSummary) {
	if len(stages) == 0 {
		return
	}
	fmt.Fprintf(w, "  stages (p50/p99/mean of the slowest 1%%, ms):")
	for _, s := range stages {
		fmt.Fprintf(w, " %s %.2f/%.2f/%.2f", s.Stage, s.P50Ms, s.P99Ms, s.TailMeanMs)
	}
	fmt.Fprintln(w)
}
