package shardtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quiremq/quire/shard"
)

// BenchDir returns a fresh directory on the disk under benchmark:
// under $QUIRE_BENCH_DIR when set, else the benchmark's temporary
// directory.
func BenchDir(b *testing.B, pattern string) string {
	if d := os.Getenv("QUIRE_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, pattern)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

// BenchConfig describes the engine under benchmark.
type BenchConfig struct {
	// New returns an Opener over fresh, empty storage.
	New func(b *testing.B) Opener
	// RecordSize is the value size of each record (default 1 KiB).
	RecordSize int
}

// Bench runs the benchmark suite every engine is measured with:
// Append/batch=B/writers=W for B in {1, 16, 256} and W in {1, 64}, and Read.
// Throughput is reported as MB/s of record values (b.SetBytes).
func Bench(b *testing.B, cfg BenchConfig) {
	if cfg.RecordSize == 0 {
		cfg.RecordSize = 1024
	}
	for _, batch := range []int{1, 16, 256} {
		for _, writers := range []int{1, 64} {
			b.Run(fmt.Sprintf("Append/batch=%d/writers=%d", batch, writers), func(b *testing.B) {
				BenchAppend(b, cfg, batch, writers)
			})
		}
	}
	b.Run("Read", func(b *testing.B) { BenchRead(b, cfg) })
}

func benchShard(b *testing.B, cfg BenchConfig) (shard.Engine, shard.Shard) {
	e, err := cfg.New(b)()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	s, err := e.Create(context.Background(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	return e, s
}

// BenchAppend measures appends of batches of `batch` records from `writers`
// concurrent goroutines; b.N counts records.
func BenchAppend(b *testing.B, cfg BenchConfig, batch, writers int) {
	_, s := benchShard(b, cfg)
	if cfg.RecordSize == 0 {
		cfg.RecordSize = 1024
	}
	value := make([]byte, cfg.RecordSize)
	for i := range value {
		value[i] = byte(i * 7)
	}
	b.SetBytes(int64(cfg.RecordSize))
	b.ResetTimer()
	var remaining atomic.Int64
	remaining.Store(int64(b.N))
	var wg sync.WaitGroup
	var failed atomic.Value
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs := make([]shard.Record, batch)
			for {
				n := remaining.Add(-int64(batch))
				k := batch
				if n < 0 {
					k = batch + int(n)
					if k <= 0 {
						return
					}
				}
				for i := range recs[:k] {
					recs[i] = shard.Record{Timestamp: 1, Value: value}
				}
				if _, err := s.Append(context.Background(), recs[:k]); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}

// BenchRead measures sequential reads of 1 KiB records in reads of up to 1 MiB;
// b.N counts records.
func BenchRead(b *testing.B, cfg BenchConfig) {
	_, s := benchShard(b, cfg)
	if cfg.RecordSize == 0 {
		cfg.RecordSize = 1024
	}
	const prefill = 32768
	value := make([]byte, cfg.RecordSize)
	recs := make([]shard.Record, 256)
	for i := range recs {
		recs[i] = shard.Record{Timestamp: 1, Value: value}
	}
	for i := 0; i < prefill; i += len(recs) {
		if _, err := s.Append(context.Background(), recs); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(cfg.RecordSize))
	b.ResetTimer()
	var off uint64
	for n := 0; n < b.N; {
		got, err := s.Read(context.Background(), off, shard.Limits{MaxBytes: 1 << 20})
		if err != nil {
			b.Fatal(err)
		}
		n += len(got)
		off = got[len(got)-1].Offset + 1
		if off >= prefill {
			off = 0
		}
	}
}
