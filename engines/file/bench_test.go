package file

import (
	"os"
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
// file in the same directory. It reports both rates (bytes written to the
// segment, framing included, and record payload) and their ratio.
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
	syncs0, bytes0 := e.syncs.Load(), e.syncedBytes.Load()
	var remaining atomic.Int64
	remaining.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ResetTimer()
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
	engineRate := float64(written) / elapsed.Seconds() / 1e6
	payloadRate := float64(int64(b.N)*size) / elapsed.Seconds() / 1e6

	// The raw ceiling at the same bytes per fdatasync.
	fs := vfs.Default
	f, err := fs.Create(fs.PathJoin(dir, "raw"), vfs.CategoryShard)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, perSync)
	for i := range buf {
		buf[i] = byte(i*13 + 1)
	}
	n := max(syncs, 200)
	var off int64
	rawStart := time.Now()
	for range n {
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
		off += perSync
		if err := f.SyncData(); err != nil {
			b.Fatal(err)
		}
	}
	rawRate := float64(off) / time.Since(rawStart).Seconds() / 1e6

	b.ReportMetric(float64(perSync), "bytes/sync")
	b.ReportMetric(float64(b.N)/float64(syncs), "appends/sync")
	b.ReportMetric(engineRate, "engine-MB/s")
	b.ReportMetric(payloadRate, "payload-MB/s")
	b.ReportMetric(rawRate, "raw-MB/s")
	b.ReportMetric(engineRate/rawRate, "ratio-vs-raw")
}
