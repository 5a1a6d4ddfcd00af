package hist

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// Quantiles are within the bucket precision (1/128 of the value, plus 1
// ns) of the exact quantiles of the same values, recorded directly or in
// two halves merged; q=0 and q=1 are the exact extremes.
func TestQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h, a, b Histogram
	var vals []time.Duration
	for i := range 100000 {
		// Log-uniform from 1 ns to 10 s.
		v := time.Duration(math.Pow(10, rng.Float64()*10))
		vals = append(vals, v)
		h.Record(v)
		if i%2 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	a.Merge(&b)
	slices.Sort(vals)
	for name, hh := range map[string]*Histogram{"direct": &h, "merged": &a} {
		if hh.Count() != uint64(len(vals)) || hh.Min() != vals[0] || hh.Max() != vals[len(vals)-1] {
			t.Fatalf("%s: count %d min %v max %v, want %d, %v, %v", name, hh.Count(), hh.Min(), hh.Max(), len(vals), vals[0], vals[len(vals)-1])
		}
		for _, q := range []float64{0, 0.001, 0.5, 0.9, 0.99, 0.999, 1} {
			exact := vals[int(q*float64(len(vals)-1))]
			got := hh.Quantile(q)
			tol := exact/128 + 1
			if d := got - exact; d > tol || -d > tol {
				t.Errorf("%s q%.3f: %v, exact %v (tolerance %v)", name, q, got, exact, tol)
			}
		}
	}
	if h.Quantile(0) != vals[0] || h.Quantile(1) != vals[len(vals)-1] {
		t.Errorf("q0 %v q1 %v, want the extremes %v and %v", h.Quantile(0), h.Quantile(1), vals[0], vals[len(vals)-1])
	}
}

// Every value lands in the bucket whose range holds it, and the buckets
// rise with the values.
func TestBuckets(t *testing.T) {
	for _, v := range []uint64{0, 1, 63, 64, 65, 127, 128, 129, 1000, 1 << 20, 1<<40 + 12345, 1<<63 - 1} {
		i := index(v)
		if lo, next := low(i), low(i+1); v < lo || (i+1 < buckets && v >= next) {
			t.Errorf("value %d in bucket %d = [%d, %d)", v, i, lo, next)
		}
	}
	prev := 0
	for v := uint64(0); v < 1<<60; v = v*9/8 + 1 { // v*9 fits in a uint64
		if i := index(v); i < prev || i >= buckets {
			t.Fatalf("index(%d) = %d after %d", v, i, prev)
		} else {
			prev = i
		}
	}
	if index(math.MaxInt64) >= buckets {
		t.Fatal("the largest duration is out of range")
	}
}

// A negative duration counts as zero; merging an empty histogram changes
// nothing; an empty one has no quantiles.
func TestEdges(t *testing.T) {
	var h, empty Histogram
	if empty.Quantile(0.5) != 0 || empty.Max() != 0 || empty.Count() != 0 {
		t.Error("an empty histogram has values")
	}
	h.Record(-time.Second)
	h.Record(3 * time.Millisecond)
	h.Merge(&empty)
	if h.Count() != 2 || h.Min() != 0 || h.Max() != 3*time.Millisecond || h.Quantile(0) != 0 || h.Quantile(1) != 3*time.Millisecond {
		t.Errorf("count %d min %v max %v q0 %v q1 %v", h.Count(), h.Min(), h.Max(), h.Quantile(0), h.Quantile(1))
	}
	empty.Merge(&h)
	if empty.Count() != 2 || empty.Min() != 0 || empty.Max() != 3*time.Millisecond {
		t.Errorf("merged into empty: count %d min %v max %v", empty.Count(), empty.Min(), empty.Max())
	}
}
