package file

import (
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

// benchDir is a fresh directory on the disk under test: $QUIRE_BENCH_DIR if
// set, else the test's temporary directory.
func benchDir(b *testing.B) string {
	if d := os.Getenv("QUIRE_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "quire-file-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

// BenchmarkSuite runs the shard benchmark suite on the real disk.
//
//	go test -run XXX -bench 'FileVsRaw|Bench' -benchtime 3s ./engines/file
func BenchmarkSuite(b *testing.B) {
	shardtest.Bench(b, shardtest.BenchConfig{New: func(b *testing.B) shardtest.Opener {
		dir := benchDir(b)
		return func() (shard.Engine, error) { return Open(Options{Dir: dir, Logger: quietLogger}) }
	}})
}

// BenchmarkFileVsRawCeiling measures 64 concurrent appenders of 1 KiB records
// (one record per append) against the raw ceiling of the same disk: a loop of
// write + fdatasync of exactly the engine's average bytes per fdatasync, on a
// file in the same directory. The engine and the raw loop alternate in
// fileBenchRounds rounds (b.N appends are split over the rounds; each raw
// round runs right after its engine round at that round's bytes per sync),
// so a drift of the machine's speed hits both alike; the ratio reported is
// the median of the rounds' ratios. It reports both rates (bytes written to
// the segment, framing included, and record payload; medians) and the
// ratio (the target: ≥ 0.7).
//
//	go test -run XXX -bench FileVsRaw -benchtime 200000x -count 3 ./engines/file
func BenchmarkFileVsRawCeiling(b *testing.B) {
	const writers, size = 64, 1024
	dir := benchDir(b)
	e, err := Open(Options{Dir: dir, Logger: quietLogger})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	sh, err := e.Create(bg, "bench")
	if err != nil {
		b.Fatal(err)
	}
	value := make([]byte, size)
	for i := range value {
		value[i] = byte(i*7 + 1)
	}
	raw, err := vfs.Default.Create(vfs.Default.PathJoin(dir, "raw"), vfs.CategoryShard)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	var rawOff int64

	var ratios, engineRates, payloadRates, rawRates, perSyncs, perSyncAppends []float64
	rounds := min(fileBenchRounds, max(1, b.N/1000))
	b.ResetTimer()
	for r := range rounds {
		n := b.N / rounds
		if r == rounds-1 {
			n = b.N - n*(rounds-1)
		}
		b.StartTimer()
		syncs0, bytes0 := e.syncs.Load(), e.syncedBytes.Load()
		var remaining atomic.Int64
		remaining.Store(int64(n))
		var wg sync.WaitGroup
		start := time.Now()
		for range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				recs := []shard.Record{{Timestamp: 1, Value: value}}
				for remaining.Add(-1) >= 0 {
					if _, err := sh.Append(bg, recs); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.StopTimer()
		syncs, written := e.syncs.Load()-syncs0, e.syncedBytes.Load()-bytes0
		if syncs == 0 {
			b.Fatal("no fdatasync")
		}
		perSync := written / syncs

		// The raw ceiling at this round's bytes per fdatasync.
		buf := make([]byte, perSync)
		for i := range buf {
			buf[i] = byte(i*13 + 1)
		}
		rawStart := time.Now()
		for range max(syncs, 200) {
			if _, err := raw.WriteAt(buf, rawOff); err != nil {
				b.Fatal(err)
			}
			rawOff += perSync
			if err := raw.SyncData(); err != nil {
				b.Fatal(err)
			}
		}
		rawRate := float64(max(syncs, 200)*perSync) / time.Since(rawStart).Seconds() / 1e6
		engineRate := float64(written) / elapsed.Seconds() / 1e6
		ratios = append(ratios, engineRate/rawRate)
		engineRates = append(engineRates, engineRate)
		payloadRates = append(payloadRates, float64(int64(n)*size)/elapsed.Seconds()/1e6)
		rawRates = append(rawRates, rawRate)
		perSyncs = append(perSyncs, float64(perSync))
		perSyncAppends = append(perSyncAppends, float64(n)/float64(syncs))
	}
	b.ReportMetric(median(perSyncs), "bytes/sync")
	b.ReportMetric(median(perSyncAppends), "appends/sync")
	b.ReportMetric(median(engineRates), "engine-MB/s")
	b.ReportMetric(median(payloadRates), "payload-MB/s")
	b.ReportMetric(median(rawRates), "raw-MB/s")
	b.ReportMetric(median(ratios), "ratio-vs-raw")
}

// fileBenchRounds is how many engine/raw round pairs
// BenchmarkFileVsRawCeiling alternates.
const fileBenchRounds = 5

// median returns the median of xs (which it sorts).
func median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}
