package journal

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

// BenchmarkSuite runs the shard benchmark suite on three bookies on disk,
// E/Qw/Qa 3/2/2 (all on one disk, as on this machine).
//
//	go test -run XXX -bench Suite -benchtime 2s ./engines/journal
func BenchmarkSuite(b *testing.B) {
	shardtest.Bench(b, shardtest.BenchConfig{New: func(b *testing.B) shardtest.Opener {
		e := newEnvOn(b, 3, shardtest.BenchDir(b, "quire-journal-bench-"))
		return func() (shard.Engine, error) { return e.engine(Options{Quorum: Quorum{3, 2, 2}}), nil }
	}})
}

// BenchmarkEngineVsLog: 64 concurrent appenders of one 1 KiB record each,
// through the engine and straight into a client.LogWriter (the ceiling the
// engine adds its entry format, offsets and cache to), side by side on the
// same bookies.
//
//	go test -run XXX -bench EngineVsLog -benchtime 20000x ./engines/journal
func BenchmarkEngineVsLog(b *testing.B) {
	e := newEnvOn(b, 3, shardtest.BenchDir(b, "quire-journal-bench-"))
	value := make([]byte, 1024)
	run := func(b *testing.B, appendOne func() error) {
		b.SetBytes(int64(len(value)))
		var n atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		for range 64 {
			wg.Go(func() {
				for n.Add(1) <= int64(b.N) {
					if err := appendOne(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	ctx := context.Background()
	var runs atomic.Int64 // each b.Run body runs more than once: fresh names
	name := func() string { return fmt.Sprintf("bench/%d", runs.Add(1)) }
	b.Run("engine", func(b *testing.B) {
		en := e.engine(Options{Quorum: Quorum{3, 2, 2}})
		defer en.Close()
		s, err := en.Create(ctx, name())
		if err != nil {
			b.Fatal(err)
		}
		run(b, func() error {
			_, err := s.Append(ctx, []shard.Record{{Value: value}})
			return err
		})
	})
	b.Run("log", func(b *testing.B) {
		cl := e.client()
		lw, err := cl.OpenLogWriter(ctx, name(), client.LogOptions{Ensemble: 3, WriteQuorum: 2, AckQuorum: 2})
		if err != nil {
			b.Fatal(err)
		}
		defer lw.Close(ctx)
		run(b, func() error {
			_, err := lw.Append(ctx, append([]byte(nil), value...))
			return err
		})
	})
}

// BenchmarkCatchUp reads a shard of 4096 one-record entries (1 KiB, as MQTT
// writes them) through a fresh engine, whose cache is cold, with MaxRecords
// 500 per Read: one bookie read per entry, in turn. (Reading ahead with 32
// concurrent reads measured no faster here: the bookies' CPU is the
// limit on this 2-core machine, not the round trips.)
//
//	go test -run XXX -bench CatchUp -benchtime 10x ./engines/journal
func BenchmarkCatchUp(b *testing.B) {
	e := newEnvOn(b, 3, shardtest.BenchDir(b, "quire-journal-bench-"))
	ctx := context.Background()
	w := e.engine(Options{Quorum: Quorum{3, 2, 2}})
	s, err := w.Create(ctx, "catchup")
	if err != nil {
		b.Fatal(err)
	}
	const entries = 4096
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range entries / 64 {
				if _, err := s.Append(ctx, []shard.Record{{Value: make([]byte, 1024)}}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(entries * 1024)
	b.ResetTimer()
	for range b.N {
		en := e.engine(Options{})
		s, err := en.Open(ctx, "catchup")
		if err != nil {
			b.Fatal(err)
		}
		var n uint64
		for n < entries {
			recs, err := s.Read(ctx, n, shard.Limits{MaxRecords: 500})
			if err != nil {
				b.Fatal(err)
			}
			n += uint64(len(recs))
		}
		en.Close()
	}
}

// BenchmarkCacheFill is what Append spends to fill the read cache with an
// entry of 16 records: "views" (encodeEntryViews, what Append does) against
// "decode" (encoding, then decoding the entry again).
//
//	go test -run XXX -bench CacheFill -count 4 ./engines/journal
func BenchmarkCacheFill(b *testing.B) {
	in := randomRecords(rand.New(rand.NewPCG(1, 2)), 16)
	for _, mode := range []string{"decode", "views"} {
		b.Run(mode, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				recs := append([]shard.Record(nil), in...)
				if mode == "views" {
					encodeEntryViews(5, 9, recs)
				} else if _, _, err := decodeEntry(encodeEntry(5, 9, recs)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
