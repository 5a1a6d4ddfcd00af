package load

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestHistogramQuantiles checks Quantile against the exact quantiles of the
// recorded sample, within the 3% bucket resolution.
func TestHistogramQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h, a, b Histogram
	var sample []time.Duration
	for i := range 20000 {
		d := time.Duration(math.Exp(rng.Float64()*20)) + time.Duration(rng.IntN(50))
		sample = append(sample, d)
		h.Record(d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(&b)
	slices.Sort(sample)
	for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 0.999} {
		want := sample[int(math.Ceil(q*float64(len(sample))))-1]
		for name, hh := range map[string]*Histogram{"direct": &h, "merged": &a} {
			got := hh.Quantile(q)
			if diff := math.Abs(float64(got-want)) / float64(want); diff > 0.03 && got-want > 1 && want-got > 1 {
				t.Errorf("%s q=%v: got %v, want %v (off by %.1f%%)", name, q, got, want, 100*diff)
			}
		}
	}
	if h.Count() != 20000 || a.Count() != 20000 || h.Max() != sample[len(sample)-1] || a.Max() != h.Max() {
		t.Errorf("count %d/%d max %v/%v, want 20000 and %v", h.Count(), a.Count(), h.Max(), a.Max(), sample[len(sample)-1])
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 {
		t.Error("empty histogram: quantile not 0")
	}
}

// TestBuckets: bucketOf is monotonic and bucketValue lies in its bucket.
func TestBuckets(t *testing.T) {
	prev := 0
	for v := int64(0); v < 1<<40; v = v*9/8 + 1 {
		i := bucketOf(v)
		if i < prev || i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d after %d", v, i, prev)
		}
		if bucketOf(bucketValue(i)) != i {
			t.Fatalf("bucketValue(%d) = %d lies in bucket %d", i, bucketValue(i), bucketOf(bucketValue(i)))
		}
		prev = i
	}
	if bucketOf(math.MaxInt64) >= histBuckets {
		t.Fatal("largest duration out of range")
	}
}
