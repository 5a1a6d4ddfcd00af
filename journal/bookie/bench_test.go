package bookie

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/quiremq/quire/internal/vfs"
)

// BenchmarkAdd measures one bookie on the real disk (b.TempDir) with 1 KiB
// entries, 1/16/64/256 writers with 32 adds in flight each, and next to it,
// in the same run and directory, the raw ceiling: the same number of bytes
// written sequentially into a pre-zeroed file with an fdatasync after each
// write of the bookie's average bytes per journal sync. With one writer the
// 2 ms group wait, not the disk, bounds throughput (32 entries per group). Reported: entries/s, MB/s,
// add latency p50/p99, bytes/sync, raw-MB/s and ratio = MB/s ÷ raw-MB/s
// (the target: ≥ 0.7).
//
//	go test ./journal/bookie -run '^$' -bench BenchmarkAdd -benchtime 200000x
func BenchmarkAdd(b *testing.B) {
	for _, writers := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchAdd(b, writers, 32) })
	}
}

func benchAdd(b *testing.B, writers, window int) {
	dir := b.TempDir()
	o := Options{
		FS:              vfs.Default,
		Dir:             dir,
		BookieID:        "bench",
		Cookies:         NewFileCookieStore(vfs.Default, dir+"/cookies.json"),
		JournalFileSize: 64 << 20,
	}
	bk, err := Open(o)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 1024)
	for i := range payload {
		payload[i] = byte(i)
	}
	lat := make([]time.Duration, b.N)
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			sem := make(chan struct{}, window)
			var inflight sync.WaitGroup
			for i := w; i < b.N; i += writers {
				sem <- struct{}{}
				inflight.Add(1)
				t0 := time.Now()
				bk.AddEntry(uint64(w), uint64(i), -1, payload, false, func(err error) {
					if err != nil {
						b.Error(err)
					}
					lat[i] = time.Since(t0)
					<-sem
					inflight.Done()
				})
			}
			inflight.Wait()
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()

	var m dto.Metric
	bk.m.syncBytes.Write(&m)
	syncs := m.GetHistogram().GetSampleCount()
	perSync := int(m.GetHistogram().GetSampleSum() / float64(max(syncs, 1)))
	mbps := float64(b.N) * float64(len(payload)) / elapsed.Seconds() / 1e6
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
	b.ReportMetric(mbps, "MB/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(perSync), "bytes/sync")
	var sl dto.Metric
	bk.m.syncLatency.Write(&sl)
	b.ReportMetric(sl.GetHistogram().GetSampleSum()/float64(max(sl.GetHistogram().GetSampleCount(), 1))*1e6, "sync-µs")
	// Close syncs the entry logs, so their writeback is not charged to
	// the raw ceiling measured next.
	if err := bk.Close(); err != nil {
		b.Fatal(err)
	}
	raw := rawSyncCeiling(b, dir, perSync, max(int64(b.N)*int64(len(payload)), 64<<20))
	b.ReportMetric(raw, "raw-MB/s")
	b.ReportMetric(mbps/raw, "ratio")
}

// rawSyncCeiling writes total bytes in chunks of perSync sequentially into
// a pre-zeroed file in dir, fdatasyncing after each, and returns MB/s.
func rawSyncCeiling(b *testing.B, dir string, perSync int, total int64) float64 {
	fs := vfs.Default
	const size = 256 << 20
	f, err := fs.Create(fs.PathJoin(dir, "raw-ceiling"), vfs.CategoryJournal)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Preallocate(0, size); err != nil {
		b.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zeros)) {
		clear(zeros)
		if _, err := f.WriteAt(zeros, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, max(perSync, 1))
	var off int64
	var written int64
	start := time.Now()
	for written < total {
		if off+int64(len(chunk)) > size {
			off = 0
		}
		if _, err := f.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
		if err := f.SyncData(); err != nil {
			b.Fatal(err)
		}
		off += int64(len(chunk))
		written += int64(len(chunk))
	}
	return float64(written) / time.Since(start).Seconds() / 1e6
}
