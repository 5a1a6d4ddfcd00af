// Package hist is the latency histogram of Quire's benchmarks
// (cmd/journal-bench, benchmarks/mqtt/load): durations in log-linear
// buckets, in the manner of an HDR histogram, so that quantiles of any
// number of values cost a fixed 30 KiB and a merge is a sum.
//
// Values below 64 ns are exact to the nanosecond; a larger one lands in one
// of 64 linear sub-buckets of its power of two, so a quantile is within
// 1/128 of the value (the bucket's midpoint) — about 0.8% — and never
// outside the smallest and largest values recorded, which are kept exactly.
// 3,776 counters hold anything up to 2^63 ns (292 years).
package hist

import (
	"math/bits"
	"time"
)

// Histogram records durations. The zero value is empty and ready to use.
// It is not safe for concurrent use: keep one per goroutine and Merge them,
// or guard it.
type Histogram struct {
	counts [buckets]uint64
	n      uint64
	min    int64 // ns
	max    int64 // ns
}

const (
	subBits = 6 // 64 linear sub-buckets per power of two
	sub     = 1 << subBits
	buckets = (64 - subBits + 1) * sub
)

// index maps a value (ns, not negative) to its bucket.
func index(v uint64) int {
	if v < sub {
		return int(v)
	}
	shift := bits.Len64(v) - subBits - 1 // v>>shift is in [64, 128)
	return (shift+1)*sub + int(v>>shift) - sub
}

// low returns the smallest value (ns) of bucket i.
func low(i int) uint64 {
	if i < sub {
		return uint64(i)
	}
	shift := i/sub - 1
	return uint64(i%sub+sub) << shift
}

// Record adds one duration (a negative one counts as zero).
func (h *Histogram) Record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[index(uint64(v))]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	h.n++
	h.max = max(h.max, v)
}

// Merge adds every value of o.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Count is the number of values recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Min is the smallest value recorded (0 when empty).
func (h *Histogram) Min() time.Duration { return time.Duration(h.min) }

// Max is the largest value recorded (0 when empty).
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Quantile returns the value at quantile q (0..1) — the value of rank
// q·(n−1)+1 of the n recorded, in ascending order — as the midpoint of
// the bucket holding it, kept within the smallest and largest values
// recorded (which q=0 and q=1 return exactly). 0 when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := uint64(q*float64(h.n-1)) + 1 // 1-based
	switch rank {
	case 1:
		return time.Duration(h.min)
	case h.n:
		return time.Duration(h.max)
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := low(i), low(i+1)-1
			return time.Duration(min(max(int64(lo+(hi-lo)/2), h.min), h.max))
		}
	}
	return time.Duration(h.max)
}
