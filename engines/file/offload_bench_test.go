package file

import (
	"bytes"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// BenchmarkOffloadMinIO measures, against a local MinIO in the same run:
// offload throughput (upload with its CRC-32C checked by MinIO, record,
// local delete) of segments of segMiB next to raw PUTs of objects of the
// same size, and catch-up reads of offloaded segments (Read from offset 0
// with 4 MiB limits) next to raw ranged GETs of the same objects.
//
//	go test -run XXX -bench OffloadMinIO -benchtime 10x ./engines/file
func BenchmarkOffloadMinIO(b *testing.B) {
	srv := s3test.StartMinIO(b)
	st, err := s3store.Open(b.Context(), srv.Options("bench-offload"))
	if err != nil {
		b.Fatal(err)
	}
	for _, segMiB := range []int64{16, 64} {
		size := segMiB << 20
		obj := make([]byte, size)
		for i := range obj {
			obj[i] = byte(i*7 + 1)
		}
		objects := 0 // raw objects put
		b.Run(fmt.Sprintf("seg=%dMiB/raw-put", segMiB), func(b *testing.B) {
			b.SetBytes(size)
			for range b.N {
				if err := st.Put(b.Context(), fmt.Sprintf("raw/%d/%d", segMiB, objects), bytes.NewReader(obj), size); err != nil {
					b.Fatal(err)
				}
				objects++
			}
		})
		// Each op GETs every raw object in 4 MiB ranges, as a catch-up
		// read below reads every offloaded segment.
		b.Run(fmt.Sprintf("seg=%dMiB/raw-get", segMiB), func(b *testing.B) {
			b.SetBytes(size * int64(objects))
			for range b.N {
				for i := range objects {
					for off := int64(0); off < size; off += 4 << 20 {
						if _, err := st.Get(b.Context(), fmt.Sprintf("raw/%d/%d", segMiB, i), off, 4<<20); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
		})
		// One engine; each iteration fills one segment (timer stopped) and
		// offloads it.
		e := openEngine(b, vfs.NewMem(), "/d", Options{
			SegmentBytes: size, offloadManual: true, Sync: SyncNone,
			Offload: &OffloadOptions{Store: st, Prefix: fmt.Sprintf("bench-%d-%d", segMiB, time.Now().UnixNano())},
		})
		s := mustCreate(b, e, "bench")
		recs := make([]shard.Record, 64)
		for i := range recs {
			recs[i] = shard.Record{Value: obj[i<<14 : (i+1)<<14]} // 16 KiB each, 1 MiB per append
		}
		fill := func() {
			n := len(s.segs)
			for len(s.segs) == n {
				mustAppend(b, s, recs...)
			}
		}
		b.Run(fmt.Sprintf("seg=%dMiB/offload", segMiB), func(b *testing.B) {
			var total int64
			for range b.N {
				b.StopTimer()
				fill()
				b.StartTimer()
				e.off.pass(b.Context())
				total += s.segs[len(s.segs)-2].size
			}
			if logs, _ := localSegments(b, e.fs, s); logs != 1 {
				b.Fatalf("%d local segments after the passes", logs)
			}
			b.SetBytes(total / int64(b.N))
		})
		b.Run(fmt.Sprintf("seg=%dMiB/catchup-read", segMiB), func(b *testing.B) {
			end := s.segs[len(s.segs)-1].base // offloaded records only
			var read int64
			for range b.N {
				read = catchupRead(b, s, end)
			}
			b.SetBytes(read)
		})
		e.Close()
	}
}

// BenchmarkOffloadSustainedMinIO appends 1 MiB batches as fast as the
// engine takes them (disk, SyncBatch) while the background offloader sends
// 16 MiB segments to a local MinIO (zero delete lag). It reports the append
// rate, the offload rate over the same time, and how long offload needed
// after the last append to catch up (drain-s: a growing lag shows as a
// drain time that grows with b.N).
//
//	go test -run XXX -bench OffloadSustainedMinIO -benchtime 256x ./engines/file
func BenchmarkOffloadSustainedMinIO(b *testing.B) {
	srv := s3test.StartMinIO(b)
	st, err := s3store.Open(b.Context(), srv.Options("bench-sustained"))
	if err != nil {
		b.Fatal(err)
	}
	const segBytes = 16 << 20
	e := openEngine(b, vfs.Default, benchDir(b), Options{
		SegmentBytes: segBytes,
		Offload:      &OffloadOptions{Store: st, Prefix: fmt.Sprintf("sustained-%d", time.Now().UnixNano()), Interval: 100 * time.Millisecond},
	})
	defer e.Close()
	s := mustCreate(b, e, "bench")
	val := make([]byte, 16<<10)
	for i := range val {
		val[i] = byte(i*7 + 1)
	}
	recs := make([]shard.Record, 64) // 1 MiB per append
	for i := range recs {
		recs[i] = shard.Record{Value: val}
	}
	b.SetBytes(1 << 20)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		mustAppend(b, s, recs...)
	}
	appendTime := time.Since(start)
	sealed := int64(len(s.segs) - 1)
	for testutil.ToFloat64(e.m.offloadSegments) < float64(sealed) {
		time.Sleep(10 * time.Millisecond)
	}
	total := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/appendTime.Seconds(), "append-MB/s")
	b.ReportMetric(testutil.ToFloat64(e.m.offloadBytes)/(1<<20)/total.Seconds(), "offload-MB/s")
	b.ReportMetric((total - appendTime).Seconds(), "drain-s")
}

// BenchmarkOffloadCatchupMinIO measures catch-up reads of a shard whose
// sealed segments are all offloaded to a local MinIO (Read from offset 0
// with 4 MiB limits, through remote.go) against MinIO's own GET throughput
// for the same objects (one whole-object GET after the other), in
// alternating rounds of the same run: each iteration is one raw round and
// one catch-up round. It reports the median MB/s of each, their ratio
// (catchup/raw) and the process CPU per MB of each.
//
//	go test -run XXX -bench OffloadCatchupMinIO -benchtime 7x ./engines/file
func BenchmarkOffloadCatchupMinIO(b *testing.B) {
	for _, segMiB := range []int64{16, 64} {
		b.Run(fmt.Sprintf("seg=%dMiB", segMiB), func(b *testing.B) {
			benchCatchup(b, segMiB<<20, 128<<20)
		})
	}
}

func benchCatchup(b *testing.B, segBytes, total int64) {
	srv := s3test.StartMinIO(b)
	st, err := s3store.Open(b.Context(), srv.Options("bench-catchup"))
	if err != nil {
		b.Fatal(err)
	}
	e := openEngine(b, vfs.NewMem(), "/d", Options{
		SegmentBytes: segBytes, offloadManual: true, Sync: SyncNone,
		Offload: &OffloadOptions{Store: st, Prefix: "catchup"},
	})
	defer e.Close()
	s := mustCreate(b, e, "bench")
	val := make([]byte, 16<<10)
	for i := range val {
		val[i] = byte(i*7 + 1)
	}
	recs := make([]shard.Record, 64) // 16 KiB each, 1 MiB per append
	for i := range recs {
		recs[i] = shard.Record{Value: val}
	}
	for int64(len(s.segs)-1)*segBytes < total {
		mustAppend(b, s, recs...)
	}
	e.off.pass(b.Context())
	if logs, _ := localSegments(b, e.fs, s); logs != 1 {
		b.Fatalf("%d local segments after the pass, want only the active one", logs)
	}
	var keys []string
	for _, seg := range s.segs[:len(s.segs)-1] {
		keys = append(keys, seg.remote.Load().Key)
	}
	end := s.segs[len(s.segs)-1].base // offloaded records only
	raw := func() (n int64) {
		for _, k := range keys {
			got, err := st.Get(b.Context(), k, 0, -1)
			if err != nil {
				b.Fatal(err)
			}
			n += int64(len(got))
		}
		return n
	}
	catchup := func() int64 { return catchupRead(b, s, end) }
	var rawRates, catchRates, rawCPU, catchCPU []float64
	round := func(f func() int64, rates, cpu *[]float64) {
		c0, t0 := processCPU(), time.Now()
		n := f()
		mb := float64(n) / (1 << 20)
		*rates = append(*rates, mb/time.Since(t0).Seconds())
		*cpu = append(*cpu, (processCPU()-c0).Seconds()*1e3/mb)
	}
	b.ResetTimer()
	for range b.N {
		round(raw, &rawRates, &rawCPU)
		round(catchup, &catchRates, &catchCPU)
	}
	b.StopTimer()
	b.ReportMetric(median(rawRates), "raw-MB/s")
	b.ReportMetric(median(catchRates), "catchup-MB/s")
	b.ReportMetric(median(catchRates)/median(rawRates), "ratio")
	b.ReportMetric(median(rawCPU), "raw-cpu-ms/MB")
	b.ReportMetric(median(catchCPU), "catchup-cpu-ms/MB")
}

// processCPU is the CPU time (user and system) the process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// catchupRead reads the shard from offset 0 up to end with 4 MiB limits,
// as a consumer catching up does, and returns the value bytes read.
func catchupRead(b *testing.B, s *Shard, end uint64) (n int64) {
	for next := uint64(0); next < end; {
		got, err := s.Read(b.Context(), next, shard.Limits{MaxBytes: 4 << 20})
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range got {
			n += int64(len(r.Value))
		}
		next = got[len(got)-1].Offset + 1
	}
	return n
}
