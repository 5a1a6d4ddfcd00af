// Package shardtest is the conformance suite every shard engine passes, and
// the benchmark suite every engine is measured with.
//
//	func TestConformance(t *testing.T) {
//		shardtest.Run(t, shardtest.Config{
//			New: func(t *testing.T) shardtest.Opener {
//				dir := t.TempDir()
//				return func() (shard.Engine, error) { return file.Open(file.Options{Dir: dir}) }
//			},
//			Durable: true,
//		})
//	}
package shardtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/shard"
)

// Opener opens an engine over one storage location. Calling it again after
// the engine was closed opens the same storage again.
type Opener func() (shard.Engine, error)

// Config describes the engine under test.
type Config struct {
	// New returns an Opener over fresh, empty storage.
	New func(t *testing.T) Opener
	// Durable engines keep every acknowledged record, the trim point and the
	// seal across Close and reopen.
	Durable bool
}

// Run runs the conformance suite.
func Run(t *testing.T, cfg Config) {
	tests := []struct {
		name string
		fn   func(t *testing.T, cfg Config)
	}{
		{"Lifecycle", testLifecycle},
		{"Names", testNames},
		{"DenseOffsets", testDenseOffsets},
		{"ReadBack", testReadBack},
		{"ReadLimits", testReadLimits},
		{"ReadRange", testReadRange},
		{"Timestamps", testTimestamps},
		{"OffsetForTime", testOffsetForTime},
		{"Trim", testTrim},
		{"Seal", testSeal},
		{"LargeRecord", testLargeRecord},
		{"ManyShards", testManyShards},
		{"Concurrent", testConcurrent},
		{"Tail", testTail},
		{"Closed", testClosed},
		{"Reopen", testReopen},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, cfg) })
	}
}

func open(t *testing.T, o Opener) shard.Engine {
	t.Helper()
	e, err := o()
	if err != nil {
		t.Fatalf("open engine: %v", err)
	}
	return e
}

func newEngine(t *testing.T, cfg Config) (shard.Engine, Opener) {
	t.Helper()
	o := cfg.New(t)
	e := open(t, o)
	t.Cleanup(func() { e.Close() })
	return e, o
}

func create(t *testing.T, e shard.Engine, name string) shard.Shard {
	t.Helper()
	s, err := e.Create(context.Background(), name)
	if err != nil {
		t.Fatalf("Create(%q): %v", name, err)
	}
	return s
}

// rec makes a deterministic record; seq identifies it.
func rec(seq int, rng *rand.Rand) shard.Record {
	r := shard.Record{
		Timestamp: 1_700_000_000_000 + int64(seq),
		Key:       fmt.Appendf(nil, "key-%d", seq),
		Value:     make([]byte, rng.IntN(300)),
	}
	for i := range r.Value {
		r.Value[i] = byte(seq + i)
	}
	if seq%3 == 0 {
		r.Headers = []shard.Header{{Key: "h", Value: []byte{byte(seq)}}, {Key: "empty", Value: nil}}
	}
	if seq%5 == 0 {
		r.Key = nil
	}
	return r
}

func batch(from, n int, rng *rand.Rand) []shard.Record {
	out := make([]shard.Record, n)
	for i := range out {
		out[i] = rec(from+i, rng)
	}
	return out
}

func append1(t *testing.T, s shard.Shard, recs []shard.Record) uint64 {
	t.Helper()
	first, err := s.Append(context.Background(), recs)
	if err != nil {
		t.Fatalf("Append(%d records): %v", len(recs), err)
	}
	return first
}

// Equal reports whether two records have the same offset, timestamp, key,
// value and headers (nil and empty byte slices are equal).
func Equal(a, b shard.Record) bool {
	if a.Offset != b.Offset || a.Timestamp != b.Timestamp || !bytes.Equal(a.Key, b.Key) || !bytes.Equal(a.Value, b.Value) || len(a.Headers) != len(b.Headers) {
		return false
	}
	for i := range a.Headers {
		if a.Headers[i].Key != b.Headers[i].Key || !bytes.Equal(a.Headers[i].Value, b.Headers[i].Value) {
			return false
		}
	}
	return true
}

func checkRecords(t *testing.T, got, want []shard.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !Equal(got[i], want[i]) {
			t.Fatalf("record %d: got %s, want %s", i, describe(got[i]), describe(want[i]))
		}
	}
}

func describe(r shard.Record) string {
	return fmt.Sprintf("{off=%d ts=%d key=%q value=%d bytes headers=%d}", r.Offset, r.Timestamp, r.Key, len(r.Value), len(r.Headers))
}

func withOffsets(recs []shard.Record, first uint64) []shard.Record {
	out := slices.Clone(recs)
	for i := range out {
		out[i].Offset = first + uint64(i)
	}
	return out
}

func readAll(t *testing.T, s shard.Shard, from uint64) []shard.Record {
	t.Helper()
	return ReadAll(t, s, from)
}

// ReadAll reads s from offset from up to its high watermark, failing t on
// an error or on a read that returns nothing below it.
func ReadAll(t testing.TB, s shard.Shard, from uint64) []shard.Record {
	t.Helper()
	var out []shard.Record
	_, high := s.Watermarks()
	for from < high {
		recs, err := s.Read(context.Background(), from, shard.Limits{MaxRecords: 97})
		if err != nil {
			t.Fatalf("Read(%d): %v", from, err)
		}
		if len(recs) == 0 {
			t.Fatalf("Read(%d) returned nothing below high watermark %d", from, high)
		}
		out = append(out, recs...)
		from = recs[len(recs)-1].Offset + 1
	}
	return out
}

func checkWatermarks(t *testing.T, s shard.Shard, low, high uint64) {
	t.Helper()
	if l, h := s.Watermarks(); l != low || h != high {
		t.Fatalf("Watermarks() = (%d, %d), want (%d, %d)", l, h, low, high)
	}
}

func testLifecycle(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, _ := newEngine(t, cfg)
	if e.Name() == "" {
		t.Error("engine has no name")
	}
	if _, err := e.Open(ctx, "missing"); !errors.Is(err, shard.ErrNotFound) {
		t.Fatalf("Open(missing) = %v, want ErrNotFound", err)
	}
	s := create(t, e, "a")
	if s.Name() != "a" {
		t.Errorf("Name() = %q", s.Name())
	}
	checkWatermarks(t, s, 0, 0)
	if _, err := e.Create(ctx, "a"); !errors.Is(err, shard.ErrExists) {
		t.Fatalf("second Create(a) = %v, want ErrExists", err)
	}
	s2, err := e.Open(ctx, "a")
	if err != nil {
		t.Fatalf("Open(a): %v", err)
	}
	append1(t, s, batch(0, 3, rand.New(rand.NewPCG(1, 1))))
	if _, h := s2.Watermarks(); h != 3 {
		t.Fatalf("second handle sees high %d, want 3", h)
	}
	create(t, e, "b")
	names, err := e.List(ctx)
	if err != nil || !slices.Equal(names, []string{"a", "b"}) {
		t.Fatalf("List() = %v, %v; want [a b]", names, err)
	}
	if err := e.Delete(ctx, "a"); err != nil {
		t.Fatalf("Delete(a): %v", err)
	}
	if _, err := s.Append(ctx, batch(0, 1, rand.New(rand.NewPCG(1, 1)))); !errors.Is(err, shard.ErrClosed) {
		t.Fatalf("Append on deleted shard = %v, want ErrClosed", err)
	}
	if _, err := e.Open(ctx, "a"); !errors.Is(err, shard.ErrNotFound) {
		t.Fatalf("Open(a) after Delete = %v, want ErrNotFound", err)
	}
	if err := e.Delete(ctx, "a"); !errors.Is(err, shard.ErrNotFound) {
		t.Fatalf("second Delete(a) = %v, want ErrNotFound", err)
	}
	names, _ = e.List(ctx)
	if !slices.Equal(names, []string{"b"}) {
		t.Fatalf("List() after Delete = %v, want [b]", names)
	}
	// A deleted name can be created again, empty.
	s3 := create(t, e, "a")
	checkWatermarks(t, s3, 0, 0)
}

func testNames(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, o := newEngine(t, cfg)
	names := []string{"orders/0", "sensors/+/temp/#", "../escape", ".", "..", "a b", "主题", "UPPER", "upper", "x%2Fy", "x/y", "$SYS/broker"}
	for i, n := range names {
		s := create(t, e, n)
		append1(t, s, batch(i, i+1, rand.New(rand.NewPCG(2, 2))))
	}
	if _, err := e.Create(ctx, ""); err == nil {
		t.Error("Create(\"\") succeeded")
	}
	check := func(e shard.Engine) {
		got, err := e.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := slices.Clone(names)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("List() = %q, want %q", got, want)
		}
		for i, n := range names {
			s, err := e.Open(ctx, n)
			if err != nil {
				t.Fatalf("Open(%q): %v", n, err)
			}
			if _, h := s.Watermarks(); h != uint64(i+1) {
				t.Fatalf("%q: high %d, want %d (names collide?)", n, h, i+1)
			}
		}
	}
	check(e)
	if cfg.Durable {
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		e2 := open(t, o)
		defer e2.Close()
		check(e2)
	}
}

func testDenseOffsets(t *testing.T, cfg Config) {
	e, _ := newEngine(t, cfg)
	s := create(t, e, "dense")
	rng := rand.New(rand.NewPCG(3, 3))
	var next uint64
	for i := range 50 {
		n := rng.IntN(20)
		first := append1(t, s, batch(i*100, n, rng))
		if first != next {
			t.Fatalf("batch %d: first offset %d, want %d", i, first, next)
		}
		next += uint64(n)
		checkWatermarks(t, s, 0, next)
	}
}

func testReadBack(t *testing.T, cfg Config) {
	e, _ := newEngine(t, cfg)
	s := create(t, e, "readback")
	rng := rand.New(rand.NewPCG(4, 4))
	var want []shard.Record
	for i := range 40 {
		b := batch(len(want), 1+rng.IntN(30), rng)
		first := append1(t, s, b)
		want = append(want, withOffsets(b, first)...)
		_ = i
	}
	checkRecords(t, readAll(t, s, 0), want)
	for range 30 {
		from := rng.IntN(len(want))
		checkRecords(t, readAll(t, s, uint64(from)), want[from:])
	}
}

func testReadLimits(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, _ := newEngine(t, cfg)
	s := create(t, e, "limits")
	var want []shard.Record
	for i := range 100 {
		r := shard.Record{Timestamp: int64(i + 1), Value: bytes.Repeat([]byte{byte(i)}, 100)}
		want = append(want, r)
	}
	append1(t, s, want)
	want = withOffsets(want, 0)
	got, err := s.Read(ctx, 10, shard.Limits{MaxRecords: 7})
	if err != nil {
		t.Fatal(err)
	}
	checkRecords(t, got, want[10:17])
	got, err = s.Read(ctx, 20, shard.Limits{MaxBytes: 350})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 1 || len(got) > 3 {
		t.Fatalf("MaxBytes 350 over 100-byte records returned %d records, want 1..3", len(got))
	}
	checkRecords(t, got, want[20:20+len(got)])
	got, err = s.Read(ctx, 30, shard.Limits{MaxBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	checkRecords(t, got, want[30:31])
	got, err = s.Read(ctx, 95, shard.Limits{MaxRecords: 50})
	if err != nil {
		t.Fatal(err)
	}
	checkRecords(t, got, want[95:])
	got, err = s.Read(ctx, 0, shard.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 {
		t.Fatal("unlimited read returned nothing")
	}
	checkRecords(t, got, want[:len(got)])
}

func testReadRange(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, _ := newEngine(t, cfg)
	s := create(t, e, "range")
	got, err := s.Read(ctx, 0, shard.Limits{})
	if err != nil || len(got) != 0 {
		t.Fatalf("Read(0) on empty shard = %d records, %v; want none, nil", len(got), err)
	}
	append1(t, s, batch(0, 10, rand.New(rand.NewPCG(5, 5))))
	got, err = s.Read(ctx, 10, shard.Limits{})
	if err != nil || len(got) != 0 {
		t.Fatalf("Read(high) = %d records, %v; want none, nil", len(got), err)
	}
	_, err = s.Read(ctx, 11, shard.Limits{})
	var oor *shard.OutOfRangeError
	if !errors.Is(err, shard.ErrOffsetOutOfRange) || !errors.As(err, &oor) || oor.Low != 0 || oor.High != 10 {
		t.Fatalf("Read(high+1) = %v, want OutOfRangeError{Low: 0, High: 10}", err)
	}
}

func testTimestamps(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, _ := newEngine(t, cfg)
	s := create(t, e, "ts")
	before := time.Now().UnixMilli()
	append1(t, s, []shard.Record{{Value: []byte("now")}, {Timestamp: 42, Value: []byte("old")}})
	after := time.Now().UnixMilli()
	got, err := s.Read(ctx, 0, shard.Limits{})
	if err != nil || len(got) != 2 {
		t.Fatalf("Read = %d records, %v", len(got), err)
	}
	if got[0].Timestamp < before || got[0].Timestamp > after {
		t.Errorf("zero timestamp became %d, want within [%d, %d]", got[0].Timestamp, before, after)
	}
	if got[1].Timestamp != 42 {
		t.Errorf("explicit timestamp became %d, want 42", got[1].Timestamp)
	}
}

func testOffsetForTime(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, _ := newEngine(t, cfg)
	s := create(t, e, "time")
	if off, err := s.OffsetForTime(ctx, 5); err != nil || off != 0 {
		t.Fatalf("OffsetForTime on empty shard = %d, %v; want 0", off, err)
	}
	// Timestamps 1000, 1010, ..., with a few out of order as producers do.
	var recs []shard.Record
	for i := range 500 {
		ts := int64(1000 + 10*i)
		if i%50 == 7 {
			ts -= 300
		}
		recs = append(recs, shard.Record{Timestamp: ts, Value: make([]byte, 200)})
	}
	for i := 0; i < len(recs); i += 25 {
		append1(t, s, recs[i:i+25])
	}
	naive := func(ts int64) uint64 {
		for i, r := range recs {
			if r.Timestamp >= ts {
				return uint64(i)
			}
		}
		return uint64(len(recs))
	}
	for _, ts := range []int64{0, 999, 1000, 1001, 1010, 1500, 2345, 5990, 5991, 6000, 7000} {
		got, err := s.OffsetForTime(ctx, ts)
		if err != nil {
			t.Fatal(err)
		}
		if want := naive(ts); got != want {
			t.Errorf("OffsetForTime(%d) = %d, want %d", ts, got, want)
		}
	}
	if err := s.Trim(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.OffsetForTime(ctx, 0); got != 100 {
		t.Errorf("OffsetForTime(0) after Trim(100) = %d, want 100", got)
	}
}

func testTrim(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, _ := newEngine(t, cfg)
	s := create(t, e, "trim")
	rng := rand.New(rand.NewPCG(6, 6))
	var want []shard.Record
	for range 20 {
		b := batch(len(want), 50, rng)
		want = append(want, withOffsets(b, append1(t, s, b))...)
	}
	if err := s.Trim(ctx, 123); err != nil {
		t.Fatal(err)
	}
	checkWatermarks(t, s, 123, 1000)
	checkRecords(t, readAll(t, s, 123), want[123:])
	if _, err := s.Read(ctx, 122, shard.Limits{}); !errors.Is(err, shard.ErrOffsetOutOfRange) {
		t.Fatalf("Read below low = %v, want ErrOffsetOutOfRange", err)
	}
	if err := s.Trim(ctx, 50); err != nil {
		t.Fatalf("Trim below low: %v", err)
	}
	checkWatermarks(t, s, 123, 1000)
	if err := s.Trim(ctx, 1001); !errors.Is(err, shard.ErrOffsetOutOfRange) {
		t.Fatalf("Trim above high = %v, want ErrOffsetOutOfRange", err)
	}
	if err := s.Trim(ctx, 990); err != nil {
		t.Fatal(err)
	}
	checkRecords(t, readAll(t, s, 990), want[990:])
	b := batch(1000, 5, rng)
	if first := append1(t, s, b); first != 1000 {
		t.Fatalf("append after trim got offset %d, want 1000", first)
	}
	if err := s.Trim(ctx, 1005); err != nil {
		t.Fatal(err)
	}
	checkWatermarks(t, s, 1005, 1005)
	if got, err := s.Read(ctx, 1005, shard.Limits{}); err != nil || len(got) != 0 {
		t.Fatalf("Read at low == high = %d, %v", len(got), err)
	}
	if first := append1(t, s, b); first != 1005 {
		t.Fatalf("append after full trim got offset %d, want 1005", first)
	}
}

func testSeal(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, _ := newEngine(t, cfg)
	s := create(t, e, "seal")
	b := batch(0, 10, rand.New(rand.NewPCG(7, 7)))
	append1(t, s, b)
	if s.Sealed() {
		t.Fatal("new shard is sealed")
	}
	if err := s.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Seal(ctx); err != nil {
		t.Fatalf("second Seal: %v", err)
	}
	if !s.Sealed() {
		t.Fatal("Sealed() = false after Seal")
	}
	if _, err := s.Append(ctx, b); !errors.Is(err, shard.ErrSealed) {
		t.Fatalf("Append after Seal = %v, want ErrSealed", err)
	}
	checkWatermarks(t, s, 0, 10)
	checkRecords(t, readAll(t, s, 0), withOffsets(b, 0))
}

func testLargeRecord(t *testing.T, cfg Config) {
	e, _ := newEngine(t, cfg)
	s := create(t, e, "large")
	big := shard.Record{Timestamp: 1, Key: []byte("k"), Value: bytes.Repeat([]byte("0123456789abcdef"), 1<<16+3)} // ~1 MiB
	b := []shard.Record{{Timestamp: 1, Value: []byte("small")}, big, {Timestamp: 2, Value: []byte("after")}}
	append1(t, s, b)
	got, err := s.Read(context.Background(), 1, shard.Limits{MaxBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	checkRecords(t, got, withOffsets(b, 0)[1:2])
	checkRecords(t, readAll(t, s, 0), withOffsets(b, 0))
}

func testManyShards(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, o := newEngine(t, cfg)
	const n = 200
	for i := range n {
		s := create(t, e, fmt.Sprintf("many/%d", i))
		append1(t, s, batch(i, 1+i%4, rand.New(rand.NewPCG(8, uint64(i)))))
	}
	check := func(e shard.Engine) {
		names, err := e.List(ctx)
		if err != nil || len(names) != n {
			t.Fatalf("List() = %d names, %v; want %d", len(names), err, n)
		}
		for i := range n {
			s, err := e.Open(ctx, fmt.Sprintf("many/%d", i))
			if err != nil {
				t.Fatal(err)
			}
			checkRecords(t, readAll(t, s, 0), withOffsets(batch(i, 1+i%4, rand.New(rand.NewPCG(8, uint64(i)))), 0))
		}
	}
	check(e)
	if cfg.Durable {
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		e2 := open(t, o)
		defer e2.Close()
		check(e2)
	}
}

// testConcurrent runs appenders and tailing readers at once (run it under
// -race). Each appender's records must appear in its own order, offsets stay
// dense, and every reader sees the same sequence.
func testConcurrent(t *testing.T, cfg Config) {
	ctx := context.Background()
	e, _ := newEngine(t, cfg)
	s := create(t, e, "concurrent")
	const writers, batches, per = 8, 60, 7
	total := uint64(writers * batches * per)
	var wg sync.WaitGroup
	errc := make(chan error, writers+4)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				recs := make([]shard.Record, per)
				for i := range recs {
					recs[i] = shard.Record{Timestamp: 1, Key: []byte{byte(w)}, Value: fmt.Appendf(nil, "%d/%d", w, b*per+i)}
				}
				if _, err := s.Append(ctx, recs); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	results := make([][]shard.Record, 4)
	var rwg sync.WaitGroup
	for r := range results {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			var next uint64
			deadline := time.Now().Add(30 * time.Second)
			for next < total {
				if time.Now().After(deadline) {
					errc <- fmt.Errorf("reader %d stuck at %d", r, next)
					return
				}
				recs, err := s.Read(ctx, next, shard.Limits{MaxRecords: 1 + r*13})
				if err != nil {
					errc <- fmt.Errorf("reader %d: Read(%d): %w", r, next, err)
					return
				}
				for _, rec := range recs {
					if rec.Offset != next {
						errc <- fmt.Errorf("reader %d: got offset %d, want %d", r, rec.Offset, next)
						return
					}
					next++
				}
				results[r] = append(results[r], recs...)
				if len(recs) == 0 {
					time.Sleep(100 * time.Microsecond)
				}
			}
		}()
	}
	wg.Wait()
	rwg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	checkWatermarks(t, s, 0, total)
	all := readAll(t, s, 0)
	nextSeq := make([]int, writers)
	for _, r := range all {
		w := int(r.Key[0])
		if want := fmt.Sprintf("%d/%d", w, nextSeq[w]); string(r.Value) != want {
			t.Fatalf("offset %d: got %q, want %q (writer order broken)", r.Offset, r.Value, want)
		}
		nextSeq[w]++
	}
	for i, res := range results {
		checkRecords(t, res, all)
		_ = i
	}
}

func testTail(t *testing.T, cfg Config) {
	e, _ := newEngine(t, cfg)
	s := create(t, e, "tail")
	tl, ok := s.(shard.Tailer)
	if !ok {
		t.Skip("engine does not implement shard.Tailer")
	}
	ch := tl.Wait(0)
	select {
	case <-ch:
		t.Fatal("Wait(0) fired on an empty shard")
	default:
	}
	append1(t, s, batch(0, 2, rand.New(rand.NewPCG(9, 9))))
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait(0) did not fire after an append")
	}
	select {
	case <-tl.Wait(1):
	default:
		t.Fatal("Wait(1) with high 2 is not already closed")
	}
	ch = tl.Wait(2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not fire on Close")
	}
}

func testClosed(t *testing.T, cfg Config) {
	ctx := context.Background()
	o := cfg.New(t)
	e := open(t, o)
	s := create(t, e, "closed")
	append1(t, s, batch(0, 3, rand.New(rand.NewPCG(10, 10))))
	if err := e.Close(); err != nil {
		t.Fatalf("engine Close: %v", err)
	}
	if _, err := s.Append(ctx, batch(0, 1, rand.New(rand.NewPCG(10, 10)))); !errors.Is(err, shard.ErrClosed) {
		t.Fatalf("Append after engine Close = %v, want ErrClosed", err)
	}
	if _, err := s.Read(ctx, 0, shard.Limits{}); !errors.Is(err, shard.ErrClosed) {
		t.Fatalf("Read after engine Close = %v, want ErrClosed", err)
	}
	if _, err := e.Create(ctx, "x"); !errors.Is(err, shard.ErrClosed) {
		t.Fatalf("Create after engine Close = %v, want ErrClosed", err)
	}
	if _, err := e.Open(ctx, "closed"); !errors.Is(err, shard.ErrClosed) {
		t.Fatalf("Open after engine Close = %v, want ErrClosed", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second engine Close: %v", err)
	}
}

func testReopen(t *testing.T, cfg Config) {
	if !cfg.Durable {
		t.Skip("engine is not durable")
	}
	ctx := context.Background()
	o := cfg.New(t)
	e := open(t, o)
	rng := rand.New(rand.NewPCG(11, 11))
	s := create(t, e, "reopen")
	var want []shard.Record
	for range 30 {
		b := batch(len(want), 1+rng.IntN(40), rng)
		want = append(want, withOffsets(b, append1(t, s, b))...)
	}
	if err := s.Trim(ctx, 17); err != nil {
		t.Fatal(err)
	}
	sealed := create(t, e, "sealed")
	append1(t, sealed, batch(0, 4, rng))
	if err := sealed.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	high := uint64(len(want))
	for round := range 3 {
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		e = open(t, o)
		s, err := e.Open(ctx, "reopen")
		if err != nil {
			t.Fatal(err)
		}
		checkWatermarks(t, s, 17, high)
		checkRecords(t, readAll(t, s, 17), want[17:])
		b := batch(len(want), 5, rng)
		first := append1(t, s, b)
		if first != high {
			t.Fatalf("round %d: append after reopen at %d, want %d", round, first, high)
		}
		want = append(want, withOffsets(b, first)...)
		high += 5
		sl, err := e.Open(ctx, "sealed")
		if err != nil {
			t.Fatal(err)
		}
		if !sl.Sealed() {
			t.Fatal("seal lost across reopen")
		}
		if _, err := sl.Append(ctx, b); !errors.Is(err, shard.ErrSealed) {
			t.Fatalf("Append to sealed shard after reopen = %v, want ErrSealed", err)
		}
	}
	e.Close()
}
