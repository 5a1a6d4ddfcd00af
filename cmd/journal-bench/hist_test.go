package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// The histogram's quantiles are within its bucket precision (1/64 of the
// value, plus 1 µs) of the exact quantiles of the same values.
func TestHistogramQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h histogram
	var vals []time.Duration
	for range 100000 {
		// Log-uniform from 1 µs to 10 s.
		v := time.Duration(float64(time.Microsecond) * math.Pow(10, rng.Float64()*7))
		v = v.Truncate(time.Microsecond)
		vals = append(vals, v)
		h.Record(v)
	}
	slices.Sort(vals)
	if h.Count() != uint64(len(vals)) {
		t.Fatalf("count %d, want %d", h.Count(), len(vals))
	}
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
		exact := vals[int(q*float64(len(vals)-1))]
		got := h.Quantile(q)
		tol := exact/64 + time.Microsecond
		if d := got - exact; d > tol || -d > tol {
			t.Errorf("q%.3f: %v, exact %v (tolerance %v)", q, got, exact, tol)
		}
	}
	if got := h.Quantile(1); got > vals[len(vals)-1] {
		t.Errorf("max quantile %v above the largest value %v", got, vals[len(vals)-1])
	}
}

func TestHistogramBuckets(t *testing.T) {
	// Every value lands in the bucket whose range holds it.
	for _, v := range []uint64{0, 1, 63, 64, 65, 127, 128, 129, 1000, 1 << 20, 1<<40 + 12345, 1<<63 - 1} {
		i := histIndex(v)
		if lo, next := histLow(i), histLow(i+1); v < lo || v >= next {
			t.Errorf("value %d in bucket %d = [%d, %d)", v, i, lo, next)
		}
	}
	var a, b histogram
	a.Record(time.Millisecond)
	b.Record(3 * time.Millisecond)
	a.Merge(&b)
	if a.Count() != 2 || a.Quantile(1) != 3*time.Millisecond || a.Quantile(0) != time.Millisecond {
		t.Errorf("merged: count %d, min %v, max %v", a.Count(), a.Quantile(0), a.Quantile(1))
	}
	var empty histogram
	if empty.Quantile(0.5) != 0 {
		t.Error("empty histogram has a median")
	}
}
