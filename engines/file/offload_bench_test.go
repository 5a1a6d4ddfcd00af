package file

import (
	"bytes"
	"fmt"
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
				read = 0
				for next := uint64(0); next < end; {
					got, err := s.Read(b.Context(), next, shard.Limits{MaxBytes: 4 << 20})
					if err != nil {
						b.Fatal(err)
					}
					for _, r := range got {
						read += int64(len(r.Value))
					}
					next = got[len(got)-1].Offset + 1
				}
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
