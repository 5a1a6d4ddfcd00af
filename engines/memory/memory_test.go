package memory

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

func TestConformance(t *testing.T) {
	shardtest.Run(t, shardtest.Config{
		New: func(t *testing.T) shardtest.Opener {
			return func() (shard.Engine, error) { return New(Options{}), nil }
		},
	})
}

func TestBudgetDropsOldest(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	e := New(Options{ShardBudgetBytes: 10 * (100 + RecordOverhead), Registerer: reg})
	defer e.Close()
	s, err := e.Create(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	rec := shard.Record{Timestamp: 1, Value: make([]byte, 100)}
	for i := range 25 {
		if _, err := s.Append(ctx, []shard.Record{rec}); err != nil {
			t.Fatal(err)
		}
		low, high := s.Watermarks()
		if high != uint64(i+1) {
			t.Fatalf("high = %d, want %d", high, i+1)
		}
		if want := uint64(max(0, i+1-10)); low != want {
			t.Fatalf("after %d appends low = %d, want %d", i+1, low, want)
		}
	}
	if got := testutil.ToFloat64(e.m.dropped); got != 15 {
		t.Fatalf("dropped_records_total = %v, want 15", got)
	}
	got, err := s.Read(ctx, 15, shard.Limits{})
	if err != nil || len(got) != 10 || got[0].Offset != 15 {
		t.Fatalf("Read(15) = %d records, %v", len(got), err)
	}
	if _, err := s.Read(ctx, 14, shard.Limits{}); err == nil {
		t.Fatal("read of a dropped offset succeeded")
	}
	// A batch bigger than the whole budget is kept whole; everything older goes.
	big := make([]shard.Record, 30)
	for i := range big {
		big[i] = rec
	}
	first, err := s.Append(ctx, big)
	if err != nil {
		t.Fatal(err)
	}
	if low, high := s.Watermarks(); low != first || high != first+30 {
		t.Fatalf("after oversized batch: (%d, %d), want (%d, %d)", low, high, first, first+30)
	}
	// The metric is exported under its documented name.
	n, err := testutil.GatherAndCount(reg, "quire_memory_dropped_records_total")
	if err != nil || n != 1 {
		t.Fatalf("quire_memory_dropped_records_total not registered: %d, %v", n, err)
	}
}

func TestAppendCopiesInput(t *testing.T) {
	ctx := context.Background()
	e := New(Options{})
	defer e.Close()
	s, _ := e.Create(ctx, "s")
	v := []byte("hello")
	s.Append(ctx, []shard.Record{{Timestamp: 1, Value: v, Headers: []shard.Header{{Key: "k", Value: v}}}})
	copy(v, "XXXXX")
	got, _ := s.Read(ctx, 0, shard.Limits{})
	if string(got[0].Value) != "hello" || string(got[0].Headers[0].Value) != "hello" {
		t.Fatalf("stored record changed with the caller's buffer: %q %q", got[0].Value, got[0].Headers[0].Value)
	}
}

func TestOffsetForTimeAfterDrops(t *testing.T) {
	ctx := context.Background()
	e := New(Options{ShardBudgetBytes: 3 * RecordOverhead})
	defer e.Close()
	s, _ := e.Create(ctx, "s")
	// A huge timestamp that is then dropped must not hide later records.
	for _, ts := range []int64{9000, 10, 20, 30} {
		s.Append(ctx, []shard.Record{{Timestamp: ts}})
	}
	if off, _ := s.OffsetForTime(ctx, 15); off != 2 {
		t.Fatalf("OffsetForTime(15) = %d, want 2", off)
	}
}

func BenchmarkEngine(b *testing.B) {
	shardtest.Bench(b, shardtest.BenchConfig{
		New: func(b *testing.B) shardtest.Opener {
			return func() (shard.Engine, error) { return New(Options{ShardBudgetBytes: 1 << 30}), nil }
		},
	})
}

// TestMetricsSharedRegistry: a second engine on the same registry (a node
// restarted in one process) counts into the exported series, not into
// collectors nobody scrapes.
func TestMetricsSharedRegistry(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	New(Options{Registerer: reg}).Close()
	e := New(Options{Registerer: reg})
	defer e.Close()
	s, err := e.Create(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, []shard.Record{{Timestamp: 1, Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP quire_memory_appended_records_total Records appended.
# TYPE quire_memory_appended_records_total counter
quire_memory_appended_records_total 1
`), "quire_memory_appended_records_total"); err != nil {
		t.Fatal(err)
	}
}
