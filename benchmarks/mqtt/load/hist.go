package load

import (
	"math/bits"
	"time"
)

// Histogram counts durations in log-linear buckets: exact below 64 ns, then
// 32 buckets per power of two (at most 3% relative error). The zero value is
// empty and ready to use; it is not safe for concurrent use (each subscriber
// keeps its own and they are merged at the end).
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	max    int64
}

const (
	histSub     = 32 // buckets per power of two above 64
	histBuckets = 64 + 58*histSub
)

func bucketOf(v int64) int {
	if v < 64 {
		return int(max(v, 0))
	}
	e := bits.Len64(uint64(v)) - 6 // v>>e is in [32, 63]
	return 64 + (e-1)*histSub + int(v>>e) - 32
}

// bucketValue is the middle of bucket i.
func bucketValue(i int) int64 {
	if i < 64 {
		return int64(i)
	}
	e := (i-64)/histSub + 1
	m := int64((i-64)%histSub + 32)
	return m<<e + (int64(1)<<e)/2
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	h.counts[bucketOf(int64(d))]++
	h.n++
	h.max = max(h.max, int64(d))
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// Count is the number of durations recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Max is the largest duration recorded.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Quantile returns the duration below which a share q (0 to 1) of the
// recorded ones lie, 0 when none were recorded.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(bucketValue(i), h.max))
		}
	}
	return time.Duration(h.max)
}
