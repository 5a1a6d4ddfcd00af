package memory

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
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

// TestEntryHoldsNoPointers: the entries are the bulk of a full shard (one per
// record), and the garbage collector skips memory without pointers; a
// pointer field would make every collection scan them all again.
func TestEntryHoldsNoPointers(t *testing.T) {
	typ := reflect.TypeFor[entry]()
	for i := range typ.NumField() {
		switch f := typ.Field(i); f.Type.Kind() {
		case reflect.Int64, reflect.Uint64, reflect.Uint32, reflect.Bool:
		default:
			t.Errorf("entry.%s is a %s: entries must hold no pointers", f.Name, f.Type)
		}
	}
}

// TestArenaModel appends random records (empty, small, and above a
// quarter chunk, which get memory of their own; keys, values and headers
// with empty values) under a budget of a few chunks, trims now and then,
// and checks every read against the records kept in a plain slice; the
// arena must free the chunks of dropped records.
func TestArenaModel(t *testing.T) {
	ctx := context.Background()
	const budget = 3 * chunkSize
	e := New(Options{ShardBudgetBytes: budget})
	defer e.Close()
	sh, _ := e.Create(ctx, "s")
	s := sh.(*Shard)
	rng := rand.New(rand.NewPCG(1, 2))
	bytesOf := func(n int) []byte {
		if n == 0 {
			return nil
		}
		b := make([]byte, n)
		seed := byte(rng.IntN(256))
		for i := range b {
			b[i] = seed + byte(i*31) // distinct per record, cheaper than rng per byte
		}
		return b
	}
	size := func() int {
		switch rng.IntN(10) {
		case 0:
			return 0
		case 1:
			return chunkSize/4 + rng.IntN(chunkSize/2) // large
		default:
			return rng.IntN(3000)
		}
	}
	var model []shard.Record // model[i] is offset low+i
	var low uint64
	for step := range 600 {
		batch := make([]shard.Record, 1+rng.IntN(8))
		for i := range batch {
			r := shard.Record{Timestamp: int64(step), Key: bytesOf(rng.IntN(40)), Value: bytesOf(size())}
			for h := range rng.IntN(4) {
				r.Headers = append(r.Headers, shard.Header{Key: fmt.Sprintf("h%d", h), Value: bytesOf(rng.IntN(3) * 7)})
			}
			batch[i] = r
		}
		first, err := s.Append(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		if first != low+uint64(len(model)) {
			t.Fatalf("step %d: Append at %d, want %d", step, first, low+uint64(len(model)))
		}
		model = append(model, batch...)
		if rng.IntN(20) == 0 {
			to := low + uint64(rng.IntN(len(model)+1))
			if err := s.Trim(ctx, to); err != nil {
				t.Fatal(err)
			}
		}
		got, _ := s.Watermarks()
		model = model[got-low:]
		low = got
		if rng.IntN(5) == 0 || step == 599 {
			from := low + uint64(rng.IntN(len(model)+1))
			recs, err := s.Read(ctx, from, shard.Limits{MaxRecords: rng.IntN(50)})
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range recs {
				w := model[int(from-low)+i]
				w.Offset = from + uint64(i)
				if !shardtest.Equal(r, w) {
					t.Fatalf("step %d: offset %d reads %v, want %v", step, w.Offset, brief(r), brief(w))
				}
			}
		}
		// Retained bytes stay within the budget plus the last batch, and
		// the chunks within what they hold plus the one being filled.
		if s.bytes > budget+int64(len(batch))*(chunkSize+RecordOverhead) {
			t.Fatalf("step %d: %d bytes retained", step, s.bytes)
		}
		if max := int(s.bytes/chunkSize) + 2*len(batch) + 2; len(s.chunks) > max {
			t.Fatalf("step %d: %d chunks kept for %d bytes", step, len(s.chunks), s.bytes)
		}
		if len(s.large) > len(model) {
			t.Fatalf("step %d: %d large records kept, %d records", step, len(s.large), len(model))
		}
	}
}

func brief(r shard.Record) string {
	return fmt.Sprintf("{off=%d ts=%d key=%d value=%d headers=%d}", r.Offset, r.Timestamp, len(r.Key), len(r.Value), len(r.Headers))
}
