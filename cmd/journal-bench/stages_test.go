package main

import (
	"math"
	"testing"
	"time"
)

// checkStages checks the stages list of a run's JSON: every stage, in
// order, p50 <= p99, and every measured append traced.
func checkStages(t *testing.T, res map[string]any) {
	t.Helper()
	list, ok := res["stages"].([]any)
	if !ok || len(list) != len(benchStages) {
		t.Fatalf("stages = %v, want %d stages", res["stages"], len(benchStages))
	}
	for i, x := range list {
		s, _ := x.(map[string]any)
		if s["stage"] != benchStages[i] {
			t.Errorf("stage %d is %v, want %s", i, s["stage"], benchStages[i])
		}
		p50, p99, tail := num(t, s, "p50_ms"), num(t, s, "p99_ms"), num(t, s, "tail_mean_ms")
		if !(0 <= p50 && p50 <= p99 && tail >= 0) {
			t.Errorf("stage %v: p50 %v, p99 %v, tail mean %v", s["stage"], p50, p99, tail)
		}
	}
	if u := num(t, res, "stages_unobserved"); u != 0 {
		t.Errorf("%v measured appends without every stage traced", u)
	}
}

// The tail attribution: the stage means over the slowest 1% of the
// sampled appends, which add up to their mean latency.
func TestStageSummary(t *testing.T) {
	var s stageStats
	const n = 100 * stageSample * 10 // 1000 samples: the tail is the slowest 10
	for i := range n {
		var d [nStages]time.Duration
		for j := range d {
			d[j] = time.Duration(j) * time.Microsecond // stage j takes j µs...
		}
		if i%stageSample == stageSample-1 && i >= n-10*stageSample {
			d[2] = 5 * time.Millisecond // ...except the last 10 samples, slow in stage 2
		}
		total := time.Duration(0)
		for _, x := range d {
			total += x
		}
		s.record(d, total)
	}
	sum := s.summary()
	if len(sum) != nStages {
		t.Fatalf("%d stages, want %d", len(sum), nStages)
	}
	for j, st := range sum {
		want := float64(j) / 1000
		if j == 2 {
			want = 5
		}
		if math.Abs(st.TailMeanMs-want) > 1e-9 {
			t.Errorf("stage %s: tail mean %v ms, want %v", st.Stage, st.TailMeanMs, want)
		}
		if p50 := st.P50Ms; math.Abs(p50-float64(j)/1000) > 1e-9 {
			t.Errorf("stage %s: p50 %v ms, want %v", st.Stage, p50, float64(j)/1000)
		}
	}
	if sum[0].Stage != "pacer" || sum[nStages-1].Stage != "caller" {
		t.Errorf("stages %s .. %s, want pacer .. caller", sum[0].Stage, sum[nStages-1].Stage)
	}
	var empty stageStats
	if empty.summary() != nil {
		t.Error("a summary with nothing recorded")
	}
}
