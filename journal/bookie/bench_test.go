package bookie

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/vfs"
)

// BenchmarkAdd measures one bookie on the real disk (b.TempDir) with 1 KiB
// entries, 1/16/64/256 writers with 32 adds in flight each, at full speed,
// and next to it, in the same run and directory, the raw ceiling: the same
// number of bytes written sequentially into a pre-zeroed file with an
// fdatasync after each write of the bookie's average bytes per journal sync.
// With one writer the 2 ms group wait, not the disk, bounds throughput (32
// entries per group).
//
// The bookie is warmed up first (the timer is stopped): it writes until its
// journal recycles files, as a bookie that has run for a while does; a
// fresh bookie zero-fills its first journal files, which doubles its disk
// writes for the first few hundred MiB (reported by BenchmarkAddCold).
//
// Reported: entries/s, MB/s, add latency p50/p99, bytes/sync, the journal's
// mean and p99 write+fdatasync time, raw-MB/s, the raw p99 write+fdatasync
// time, ratio = MB/s ÷ raw-MB/s (the target: ≥ 0.7), and
// zero-fills (journal files zero-filled during the timed run).
//
//	go test ./journal/bookie -run '^$' -bench 'BenchmarkAdd$' -benchtime 300000x -count 3
func BenchmarkAdd(b *testing.B) {
	for _, writers := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			benchAdd(b, benchConfig{writers: writers, window: 32, warm: true})
		})
	}
}

// BenchmarkAddCold is BenchmarkAdd on a fresh bookie without warm-up: its
// journal zero-fills every file it starts until checkpoints retire files
// it can recycle.
func BenchmarkAddCold(b *testing.B) {
	for _, writers := range []int{16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			benchAdd(b, benchConfig{writers: writers, window: 32})
		})
	}
}

// BenchmarkAddHalf checks the latency target: p99 add latency ≤ 2 × the
// group wait + the disk's p99 sync time, at half of the maximum
// throughput. Each run measures the maximum first (b.N entries at full
// speed, as BenchmarkAdd), then paces the writers at half of it (open
// loop: each writer issues its adds on a fixed schedule, 256 in flight at
// most) for b.N/2 entries, then the raw ceiling at the paced run's bytes
// per sync. Reported for the paced run: its entries/s, MB/s, p50/p99 add
// latency, bytes/sync and journal sync p99; max-MB/s of the full-speed
// run; raw-p99-sync-µs; bound-µs = 2 × MaxGroupWait + raw-p99-sync-µs;
// and p99/bound (target ≤ 1).
//
//	go test ./journal/bookie -run '^$' -bench 'BenchmarkAddHalf$' -benchtime 300000x -count 3
func BenchmarkAddHalf(b *testing.B) {
	for _, writers := range []int{16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			benchAdd(b, benchConfig{writers: writers, window: 32, warm: true, half: true})
		})
	}
}

type benchConfig struct {
	writers, window int
	warm            bool // write until the journal recycles files first
	half            bool // then a paced run at half of the measured rate
}

// benchSyncs collects the journal's group commits.
type benchSyncs struct {
	mu    sync.Mutex
	on    bool
	lat   []time.Duration
	bytes int64
}

func (s *benchSyncs) hook(d time.Duration, n int) {
	s.mu.Lock()
	if s.on {
		s.lat = append(s.lat, d)
		s.bytes += int64(n)
	}
	s.mu.Unlock()
}

func (s *benchSyncs) start() {
	s.mu.Lock()
	s.on, s.lat, s.bytes = true, nil, 0
	s.mu.Unlock()
}

// stop returns the number of syncs, bytes per sync, mean and p99 time.
func (s *benchSyncs) stop() (n, perSync int, mean, p99 time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.on = false
	n = len(s.lat)
	if n == 0 {
		return 0, 0, 0, 0
	}
	var sum time.Duration
	for _, d := range s.lat {
		sum += d
	}
	slices.Sort(s.lat)
	return n, int(s.bytes / int64(n)), sum / time.Duration(n), s.lat[n*99/100]
}

type phaseResult struct {
	entries int
	elapsed time.Duration
	lat     []time.Duration // sorted
}

func (r phaseResult) rate() float64 { return float64(r.entries) / r.elapsed.Seconds() }
func (r phaseResult) pct(p int) time.Duration {
	return r.lat[min(len(r.lat)-1, len(r.lat)*p/100)]
}

// runAdds adds n entries of payload from writers goroutines (ledger base+w),
// at most window in flight each. With rate > 0 the adds are paced: add i
// (over all writers) is issued at start + i/rate, or as soon as the window
// allows after that.
func runAdds(tb testing.TB, bk *Bookie, n, writers, window int, base uint64, payload []byte, rate float64) phaseResult {
	lat := make([]time.Duration, n)
	var failed atomic.Bool
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			sem := make(chan struct{}, window)
			var inflight sync.WaitGroup
			for i := w; i < n; i += writers {
				if rate > 0 {
					if d := time.Until(start.Add(time.Duration(float64(i) / rate * 1e9))); d > 0 {
						time.Sleep(d)
					}
				}
				sem <- struct{}{}
				inflight.Add(1)
				t0 := time.Now()
				bk.AddEntry(base+uint64(w), uint64(i), -1, payload, false, func(err error) {
					if err != nil && !failed.Swap(true) {
						tb.Error(err)
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
	slices.Sort(lat)
	return phaseResult{entries: n, elapsed: elapsed, lat: lat}
}

func benchAdd(b *testing.B, c benchConfig) {
	dir := b.TempDir()
	syncs := &benchSyncs{}
	o := Options{
		FS:              vfs.Default,
		Dir:             dir,
		BookieID:        "bench",
		Cookies:         NewFileCookieStore(vfs.Default, dir+"/cookies.json"),
		JournalFileSize: 64 << 20,
		syncHook:        syncs.hook,
	}
	bk, err := Open(o)
	if err != nil {
		b.Fatal(err)
	}
	o = bk.opts // with defaults
	payload := make([]byte, 1024)
	for i := range payload {
		payload[i] = byte(i)
	}
	if c.warm {
		// Write until the journal recycles files (a checkpoint retired
		// some), bounded by 16 journal files.
		base := uint64(1) << 40
		limit := 16 * o.JournalFileSize / int64(len(payload))
		for written := int64(0); bk.jnl.recycled.Load() == 0 && written < limit; written += 20000 {
			runAdds(b, bk, 20000, 16, 32, base, payload, 0)
			base += 16
		}
		if bk.jnl.recycled.Load() == 0 {
			b.Logf("warm-up: journal did not recycle a file")
		}
	}
	filled := bk.jnl.zeroFilled.Load()
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	syncs.start()
	cpu0 := processCPU()
	full := runAdds(b, bk, b.N, c.writers, c.window, 0, payload, 0)
	cpu := processCPU() - cpu0
	b.StopTimer()
	nsyncs, perSync, syncMean, syncP99 := syncs.stop()
	mbps := full.rate() * float64(len(payload)) / 1e6

	if !c.half {
		b.ReportMetric(full.rate(), "entries/s")
		b.ReportMetric(mbps, "MB/s")
		b.ReportMetric(float64(full.pct(50).Microseconds()), "p50-µs")
		b.ReportMetric(float64(full.pct(99).Microseconds()), "p99-µs")
		b.ReportMetric(float64(perSync), "bytes/sync")
		b.ReportMetric(float64(syncMean.Microseconds()), "sync-µs")
		b.ReportMetric(float64(syncP99.Microseconds()), "sync-p99-µs")
		b.ReportMetric(float64(bk.jnl.zeroFilled.Load()-filled), "zero-fills")
		// sync-busy: share of the run the journal spent in fdatasync (1 =
		// the disk path never idled); cpus: CPU seconds of the whole
		// process per second (this machine has runtime.NumCPU()).
		b.ReportMetric(float64(time.Duration(nsyncs)*syncMean)/float64(full.elapsed), "sync-busy")
		b.ReportMetric(cpu.Seconds()/full.elapsed.Seconds(), "cpus")
		// Close syncs the entry logs, so their writeback is not charged to
		// the raw ceiling measured next.
		if err := bk.Close(); err != nil {
			b.Fatal(err)
		}
		raw, _ := rawSyncCeiling(b, dir, perSync, max(int64(b.N)*int64(len(payload)), 64<<20))
		b.ReportMetric(raw, "raw-MB/s")
		b.ReportMetric(mbps/raw, "ratio")
		return
	}

	// Paced run at half of the rate just measured.
	n := max(b.N/2, 1000)
	syncs.start()
	half := runAdds(b, bk, n, c.writers, 256, 1<<32, payload, full.rate()/2)
	_, perSync, _, syncP99 = syncs.stop()
	if err := bk.Close(); err != nil {
		b.Fatal(err)
	}
	_, rawP99 := rawSyncCeiling(b, dir, perSync, max(int64(n)*int64(len(payload)), 64<<20))
	bound := 2*o.MaxGroupWait + rawP99
	b.ReportMetric(half.rate(), "entries/s")
	b.ReportMetric(half.rate()*float64(len(payload))/1e6, "MB/s")
	b.ReportMetric(mbps, "max-MB/s")
	b.ReportMetric(float64(half.pct(50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(half.pct(99).Microseconds()), "p99-µs")
	b.ReportMetric(float64(perSync), "bytes/sync")
	b.ReportMetric(float64(syncP99.Microseconds()), "sync-p99-µs")
	b.ReportMetric(float64(rawP99.Microseconds()), "raw-p99-sync-µs")
	b.ReportMetric(float64(bound.Microseconds()), "bound-µs")
	b.ReportMetric(float64(half.pct(99))/float64(bound), "p99/bound")
}

// processCPU returns the user+system CPU time of the process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawSyncCeiling writes total bytes in chunks of perSync sequentially into
// a pre-zeroed file in dir, fdatasyncing after each, and returns MB/s and
// the p99 time of one write+fdatasync.
func rawSyncCeiling(b *testing.B, dir string, perSync int, total int64) (float64, time.Duration) {
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
	var lat []time.Duration
	start := time.Now()
	for written < total {
		if off+int64(len(chunk)) > size {
			off = 0
		}
		t0 := time.Now()
		if _, err := f.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
		if err := f.SyncData(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		off += int64(len(chunk))
		written += int64(len(chunk))
	}
	mbps := float64(written) / time.Since(start).Seconds() / 1e6
	slices.Sort(lat)
	return mbps, lat[len(lat)*99/100]
}
