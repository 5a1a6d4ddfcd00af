package main

import (
	"math/bits"
	"time"
)

// histogram records durations with about 1.5% relative precision, in the
// manner of an HDR histogram: values below 64 µs are exact to the
// microsecond, larger ones land in one of 64 linear sub-buckets of their
// power of two. It holds up to 2^63 ns (292 years) in 3,776 counters,
// whatever the count of values. Not safe for concurrent use.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	min    int64 // µs
	max    int64 // µs
}

const (
	histSubBits = 6 // 64 linear sub-buckets per power of two
	histSub     = 1 << histSubBits
	histBuckets = (64 - histSubBits + 1) * histSub
)

// histIndex maps a value (µs) to its bucket.
func histIndex(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1 // v>>shift is in [64, 128)
	return (shift+1)*histSub + int(v>>shift) - histSub
}

// histLow returns the smallest value (µs) of bucket i.
func histLow(i int) uint64 {
	if i < histSub {
		return uint64(i)
	}
	shift := i/histSub - 1
	return uint64(i%histSub+histSub) << shift
}

// Record adds one duration (negative counts as zero).
func (h *histogram) Record(d time.Duration) {
	us := max(d.Microseconds(), 0)
	h.counts[histIndex(uint64(us))]++
	if h.n == 0 || us < h.min {
		h.min = us
	}
	h.n++
	h.max = max(h.max, us)
}

// Merge adds every value of o.
func (h *histogram) Merge(o *histogram) {
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
func (h *histogram) Count() uint64 { return h.n }

// Quantile returns the value at quantile q (0..1): the midpoint of the
// bucket holding it, within the smallest and largest values recorded
// (which q=0 and q=1 return exactly). 0 when empty.
func (h *histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n-1)) + 1 // 1-based rank of the value wanted
	switch rank {
	case 1:
		return time.Duration(h.min) * time.Microsecond
	case h.n:
		return time.Duration(h.max) * time.Microsecond
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo := histLow(i)
			hi := histLow(i+1) - 1
			v := min(max(int64(lo+(hi-lo)/2), h.min), h.max)
			return time.Duration(v) * time.Microsecond
		}
	}
	return time.Duration(h.max) * time.Microsecond
}
