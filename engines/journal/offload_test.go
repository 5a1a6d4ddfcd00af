package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/internal/metrics"
	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta/schema"
	"github.com/quiremq/quire/shard"
)

// offloadEngine opens an engine that offloads to st, with passes run by
// the test only, reading offloaded ledgers in chunks of 200 bytes (a few
// entries).
func offloadEngine(e *env, st objstore.Store, lag time.Duration, hook func(string) error, o Options) *Engine {
	o.Quorum, o.RollEntries, o.offloadChunkBytes = Quorum{2, 2, 1}, 4, 200
	o.Offload = &OffloadOptions{Store: st, DeleteLag: lag}
	o.offloadHook, o.noOffloadLoop = hook, true
	return e.engine(o)
}

// fill appends 40 batches of 2 records to a new shard: 10 ledgers of 4
// entries, the last being written.
func fill(t *testing.T, en *Engine, name string) shard.Shard {
	t.Helper()
	ctx := testCtx(t)
	s, err := en.Create(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if _, err := s.Append(ctx, recsOf(fmt.Sprint(i), 2)); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// checkExactlyOnce checks that the shard reads records 0..79 of fill, each
// once, in order, one at a time and in one read.
func checkExactlyOnce(t *testing.T, s shard.Shard) {
	t.Helper()
	if low, high := s.Watermarks(); low != 0 || high != 80 {
		t.Fatalf("watermarks (%d, %d), want (0, 80)", low, high)
	}
	got := readAll(t, s)
	if len(got) != 80 {
		t.Fatalf("read %d records, want 80", len(got))
	}
	for i, r := range got {
		if want := fmt.Sprintf("%d-%d", i/2, i%2); r.Offset != uint64(i) || string(r.Value) != want {
			t.Fatalf("record %d: offset %d value %q, want %q", i, r.Offset, r.Value, want)
		}
	}
	for _, from := range []uint64{0, 7, 8, 31, 79} {
		recs, err := s.Read(testCtx(t), from, shard.Limits{MaxRecords: 3})
		if err != nil || len(recs) == 0 || recs[0].Offset != from || len(recs) > 3 {
			t.Fatalf("Read(%d, 3 records) = %d records, %v", from, len(recs), err)
		}
	}
}

func logOf(t *testing.T, e *env, name string) []uint64 {
	t.Helper()
	rec, err := schema.Store{KV: e.kv}.Log(testCtx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Value.Ledgers
}

func TestOffload(t *testing.T) {
	e := newEnv(t, 3)
	ctx := testCtx(t)
	st := objstore.NewMem()
	reg := metrics.NewRegistry()
	a := offloadEngine(e, st, time.Hour, nil, Options{Registerer: reg})
	s := fill(t, a, "orders/0")
	before := logOf(t, e, "orders/0")
	if len(before) != 10 {
		t.Fatalf("log %v, want 10 ledgers", before)
	}
	now := time.Now()
	a.offloadPass(now)
	if got := testutil.ToFloat64(a.m.offloadLedgers); got != 9 {
		t.Fatalf("offloaded_ledgers_total %v, want 9 (the closed ledgers)", got)
	}
	if got := testutil.ToFloat64(a.m.offloadBytes); got <= 0 {
		t.Fatalf("offloaded_bytes_total %v", got)
	}
	objs, err := st.List(ctx, "journal/")
	if err != nil || len(objs) != 9 {
		t.Fatalf("%d objects, %v; want 9", len(objs), err)
	}
	if l := logOf(t, e, "orders/0"); len(l) != 10 {
		t.Fatalf("log %v before the delete lag passed, want 10 ledgers", l)
	}
	a.offloadPass(now.Add(2 * time.Hour))
	if got := testutil.ToFloat64(a.m.offloadLedgers); got != 9 {
		t.Fatalf("offloaded_ledgers_total %v after a second pass, want 9", got)
	}
	if l := logOf(t, e, "orders/0"); len(l) != 1 || l[0] != before[9] {
		t.Fatalf("log %v after the delete lag, want [%d]", l, before[9])
	}
	cl := e.client()
	for _, id := range before[:9] {
		if _, err := cl.Metadata(ctx, id); !errors.Is(err, client.ErrNoSuchLedger) {
			t.Fatalf("offloaded ledger %d: %v, want ErrNoSuchLedger", id, err)
		}
	}
	reads := testutil.ToFloat64(a.m.offloadReads)
	checkExactlyOnce(t, s)
	// 9 ledgers of 4 entries (about 70 bytes each), read in chunks of 200
	// bytes: more than one ranged read per ledger.
	if got := testutil.ToFloat64(a.m.offloadReads) - reads; got <= 9 {
		t.Fatalf("%v ranged reads of 9 offloaded ledgers in chunks smaller than a ledger, want > 9", got)
	}
	if off, err := s.OffsetForTime(ctx, 1001); err != nil || off != 1 {
		t.Fatalf("OffsetForTime(1001) = %d, %v; want 1", off, err)
	}
	if got := testutil.ToFloat64(a.m.offloadFailures); got != 0 {
		t.Fatalf("offload_failures_total %v", got)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	// A new engine reads through the objects and the log; appends go on.
	b := offloadEngine(e, st, time.Hour, nil, Options{})
	defer b.Close()
	if s, err = b.Open(ctx, "orders/0"); err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, s)
	if first, err := s.Append(ctx, recsOf("new", 1)); err != nil || first != 80 {
		t.Fatalf("append after reopen: %d, %v; want 80", first, err)
	}
	// Trim drops the offloaded ledgers below the trim point: records, objects.
	if err := s.Trim(ctx, 50); err != nil {
		t.Fatal(err)
	}
	if objs, _ := st.List(ctx, "journal/"); len(objs) != 3 {
		t.Fatalf("%d objects after Trim(50), want 3 (records 48..71)", len(objs))
	}
	got := readAll(t, s)
	if len(got) != 31 || got[0].Offset != 50 || string(got[0].Value) != "25-0" {
		t.Fatalf("after Trim(50): %d records from %d", len(got), got[0].Offset)
	}
	// Delete removes the manifest and the objects.
	if err := b.Delete(ctx, "orders/0"); err != nil {
		t.Fatal(err)
	}
	if objs, _ := st.List(ctx, "journal/"); len(objs) != 0 {
		t.Fatalf("%d objects after Delete", len(objs))
	}
	if rs, err := b.loadRemote(ctx, "orders/0"); err != nil || len(rs) != 0 {
		t.Fatalf("manifest after Delete: %v, %v", rs, err)
	}
}

// A crash at each step of an offload (the engine is dropped without
// closing; a new one takes the shards over) leaves every record readable
// exactly once, and the offload resumes.
func TestOffloadCrash(t *testing.T) {
	e := newEnv(t, 3)
	st := objstore.NewMem()
	errCrash := errors.New("crash")
	for _, step := range []string{stepUploaded, stepRecorded, stepDropped} {
		t.Run(step, func(t *testing.T) {
			ctx := testCtx(t)
			name := "crash-" + step
			crashed := false
			a := offloadEngine(e, st, 0, func(s string) error {
				if s == step && !crashed {
					crashed = true
					return errCrash
				}
				return nil
			}, Options{})
			fill(t, a, name)
			a.offloadPass(time.Now())
			if !crashed {
				t.Fatalf("the pass never reached step %s", step)
			}
			// a is abandoned as a crash would leave it: its ledger stays open.
			b := offloadEngine(e, st, 0, nil, Options{})
			defer b.Close()
			s, err := b.Open(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			checkExactlyOnce(t, s)
			b.offloadPass(time.Now())
			if got := testutil.ToFloat64(b.m.offloadFailures); got != 0 {
				t.Fatalf("offload failures after restart: %v", got)
			}
			// Every closed ledger is offloaded and dropped: only the one
			// being written is left.
			if l := logOf(t, e, name); len(l) != 1 {
				t.Fatalf("log %v after the resumed offload, want 1 ledger", l)
			}
			checkExactlyOnce(t, s)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			c := offloadEngine(e, st, 0, nil, Options{})
			defer c.Close()
			if s, err = c.Open(ctx, name); err != nil {
				t.Fatal(err)
			}
			checkExactlyOnce(t, s)
		})
	}
}

// The background loop offloads to a real S3 server (MinIO): every closed
// ledger ends up in the bucket and off the bookies, and every record
// reads back from offset 0, also through a new engine.
func TestOffloadMinIO(t *testing.T) {
	srv := s3test.StartMinIO(t)
	ctx := testCtx(t)
	st, err := s3store.Open(ctx, srv.Options("journal-offload"))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, 3)
	a := e.engine(Options{Quorum: Quorum{2, 2, 1}, RollEntries: 4,
		Offload: &OffloadOptions{Store: st, Prefix: "t/journal", Interval: 20 * time.Millisecond}})
	defer a.Close()
	s := fill(t, a, "orders/0")
	deadline := time.Now().Add(30 * time.Second)
	for len(logOf(t, e, "orders/0")) > 1 {
		if time.Now().After(deadline) {
			t.Fatalf("log %v: the closed ledgers were not offloaded within 30s", logOf(t, e, "orders/0"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if objs, err := st.List(ctx, "t/journal/"); err != nil || len(objs) != 9 {
		t.Fatalf("%d objects in the bucket, %v; want 9", len(objs), err)
	}
	checkExactlyOnce(t, s)
	b := offloadEngine(e, st, 0, nil, Options{})
	defer b.Close()
	s2, err := b.Open(ctx, "orders/0")
	if err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, s2)
}

// A damaged object is reported as corrupt, not read as records.
func TestOffloadCorruptObject(t *testing.T) {
	e := newEnv(t, 2)
	ctx := testCtx(t)
	st := objstore.NewMem()
	a := offloadEngine(e, st, 0, nil, Options{})
	fill(t, a, "c")
	a.offloadPass(time.Now())
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	rs, err := a.loadRemote(ctx, "c")
	if err != nil || len(rs) != 9 {
		t.Fatalf("manifest: %d records, %v", len(rs), err)
	}
	b, err := st.Get(ctx, rs[0].Key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	b[30] ^= 0xff // inside the first entry's records
	if err := st.Put(ctx, rs[0].Key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	_, s := reopen(t, e, st, "c")
	var ce *shard.CorruptError
	if _, err := s.Read(ctx, 0, shard.Limits{}); !errors.As(err, &ce) {
		t.Fatalf("Read(0) of a damaged object: %v, want a CorruptError", err)
	}
	if recs, err := s.Read(ctx, rs[1].First, shard.Limits{MaxRecords: 1}); err != nil || len(recs) != 1 || recs[0].Offset != rs[1].First {
		t.Fatalf("Read(%d) of the next, intact object: %v, %v", rs[1].First, recs, err)
	}
}

// A node that has a shard open without writing it neither reads its
// ledgers for offload nor uploads them: only the writer does, and the
// reader picks the writer's offloads up from the manifest, reading the
// ledgers the writer dropped from their objects.
func TestOffloadOnlyWriterDrops(t *testing.T) {
	e := newEnv(t, 2)
	ctx := testCtx(t)
	st := objstore.NewMem()
	a := offloadEngine(e, st, 0, nil, Options{})
	fill(t, a, "w")
	if err := a.Close(); err != nil { // clean: the next Open does not take over
		t.Fatal(err)
	}
	cs := &countingStore{Store: st}
	b := offloadEngine(e, cs, 0, nil, Options{Registerer: metrics.NewRegistry()})
	defer b.Close()
	s, err := b.Open(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	readerPass := func(when string) {
		t.Helper()
		b.offloadPass(time.Now())
		if n := testutil.ToFloat64(b.m.offloadEntries); n != 0 {
			t.Fatalf("%s: the reader read %v ledger entries to offload them", when, n)
		}
		if n := cs.puts.Load(); n != 0 {
			t.Fatalf("%s: the reader uploaded %d objects", when, n)
		}
		if got := testutil.ToFloat64(b.m.offloadFailures); got != 0 {
			t.Fatalf("%s: offload_failures_total %v", when, got)
		}
	}
	readerPass("before any writer")
	if l := logOf(t, e, "w"); len(l) != 10 {
		t.Fatalf("log %v changed by a node that does not write the shard", l)
	}
	if objs, _ := st.List(ctx, "journal/"); len(objs) != 0 {
		t.Fatalf("%d objects after the reader's pass, want 0", len(objs))
	}
	checkExactlyOnce(t, s)

	// c takes the log over: it offloads the 10 closed ledgers and drops them.
	c := offloadEngine(e, st, 0, nil, Options{Registerer: metrics.NewRegistry()})
	defer c.Close()
	cw, err := c.Open(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cw.Append(ctx, recsOf("new", 1)); err != nil {
		t.Fatal(err)
	}
	c.offloadPass(time.Now())
	if got := testutil.ToFloat64(c.m.offloadEntries); got != 40 {
		t.Fatalf("the writer read %v entries to offload 10 ledgers of 4, want 40 (each once)", got)
	}
	if l := logOf(t, e, "w"); len(l) != 1 {
		t.Fatalf("log %v after the writer's pass, want only the ledger being written", l)
	}
	// b's ledgers are gone from the bookies: its next pass finds them in
	// the manifest, and it reads them from the objects.
	readerPass("after the writer offloaded")
	checkExactlyOnce(t, s)

	// Once b writes, it reads everything, c's append included.
	if _, err := s.Append(ctx, recsOf("b", 1)); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s); len(got) != 82 || string(got[80].Value) != "new-0" || string(got[81].Value) != "b-0" {
		t.Fatalf("read %d records after b took the log over", len(got))
	}
}

// countingStore counts the Puts of a store.
type countingStore struct {
	objstore.Store
	puts atomic.Int64
}

func (c *countingStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	c.puts.Add(1)
	return c.Store.Put(ctx, key, r, size)
}

// A ledger that waits for its offload and is trimmed first waits no more:
// the shard forgets it (it leaked before, for as long as the engine ran).
func TestOffloadPendingForgotten(t *testing.T) {
	e := newEnv(t, 2)
	a := offloadEngine(e, failingStore{objstore.NewMem()}, 0, nil, Options{Registerer: metrics.NewRegistry()})
	defer a.Close()
	s := fill(t, a, "p").(*Shard)
	a.offloadPass(time.Now())
	pending := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.pending)
	}
	if n := pending(); n != 1 {
		t.Fatalf("%d ledgers waiting after a failed pass, want 1 (the first)", n)
	}
	if err := s.Trim(testCtx(t), 72); err != nil { // drops the 9 closed ledgers
		t.Fatal(err)
	}
	if n := pending(); n != 0 {
		t.Fatalf("%d ledgers waiting after Trim dropped them all", n)
	}
	a.offloadPass(time.Now())
	if n, lag := pending(), testutil.ToFloat64(a.m.offloadLag); n != 0 || lag != 0 {
		t.Fatalf("%d ledgers waiting, offload_lag_seconds %v after a pass with nothing closed to offload", n, lag)
	}
}

// deadlineStore records how long each Put had left before its deadline.
type deadlineStore struct {
	objstore.Store
	mu   sync.Mutex
	left map[int64]time.Duration // by object size
}

func (d *deadlineStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if dl, ok := ctx.Deadline(); ok {
		d.mu.Lock()
		d.left[size] = time.Until(dl)
		d.mu.Unlock()
	}
	return d.Store.Put(ctx, key, r, size)
}

// Each ledger's upload has its own deadline, OpTimeout plus its size at
// MinRate: not one deadline for the whole pass, which a large ledger could
// exceed on every pass.
func TestOffloadLedgerDeadline(t *testing.T) {
	e := newEnv(t, 2)
	ds := &deadlineStore{Store: objstore.NewMem(), left: map[int64]time.Duration{}}
	const opTimeout, rate = 2 * time.Second, 100 // bytes/s: ~3 s for a ledger
	a := offloadEngine(e, ds, 0, nil, Options{OpTimeout: opTimeout})
	a.o.Offload.MinRate = rate
	defer a.Close()
	fill(t, a, "d")
	a.offloadPass(time.Now())
	rs, err := a.loadRemote(testCtx(t), "d")
	if err != nil || len(rs) != 9 {
		t.Fatalf("%d ledgers offloaded, %v; want 9", len(rs), err)
	}
	for _, r := range rs {
		if r.Size < 2*rate {
			t.Fatalf("ledger %d has %d bytes: too few to tell its own deadline from OpTimeout", r.Ledger, r.Size)
		}
		allowance := opTimeout + time.Duration(r.Size)*time.Second/rate
		left, ok := ds.left[r.Size]
		if !ok || left > allowance || left < allowance-time.Second {
			t.Fatalf("ledger %d (%d bytes): its upload had %v left, want about %v (OpTimeout + size/MinRate)", r.Ledger, r.Size, left, allowance)
		}
	}
}

// A ledger larger than the offload buffer is streamed: the entries beyond
// the buffer are read twice (scan, then upload), the object is the same,
// and bytes that change between the two reads fail the CRC-32C check.
func TestOffloadStreams(t *testing.T) {
	e := newEnv(t, 2)
	ctx := testCtx(t)
	objects := map[int64][]objstore.ObjectInfo{}
	for _, buf := range []int64{DefaultOffloadBufferBytes, 1} { // every entry kept; none
		st := objstore.NewMem()
		a := offloadEngine(e, st, 0, nil, Options{Registerer: metrics.NewRegistry()})
		a.o.Offload.BufferBytes = buf
		s := fill(t, a, fmt.Sprintf("s%d", buf))
		a.offloadPass(time.Now())
		want := 36.0 // 9 ledgers of 4 entries, each read once
		if buf == 1 {
			want = 2 * 36 // each read again by the upload
		}
		if got := testutil.ToFloat64(a.m.offloadEntries); got != want {
			t.Fatalf("buffer %d: %v entries read to offload, want %v", buf, got, want)
		}
		if got := testutil.ToFloat64(a.m.offloadLedgers); got != 9 {
			t.Fatalf("buffer %d: %v ledgers offloaded, want 9", buf, got)
		}
		checkExactlyOnce(t, s)
		objs, err := st.List(ctx, "journal/")
		if err != nil {
			t.Fatal(err)
		}
		objects[buf] = objs
		a.Close()
	}
	a, b := objects[DefaultOffloadBufferBytes], objects[1]
	if len(a) != 9 || len(b) != 9 {
		t.Fatalf("%d and %d objects, want 9 each", len(a), len(b))
	}
	for i := range a {
		if a[i].Size != b[i].Size {
			t.Fatalf("object %d: %d bytes streamed, %d buffered", i, b[i].Size, a[i].Size)
		}
	}

	// A bookie answering other bytes the second time: the upload fails.
	en := offloadEngine(e, objstore.NewMem(), 0, nil, Options{})
	defer en.Close()
	s := fill(t, en, "changed").(*Shard)
	v, _ := s.view()
	obj, err := s.scanLedger(ctx, v.ledgers[0])
	if err != nil {
		t.Fatal(err)
	}
	obj.kept[0] = bytes.Clone(obj.kept[0])
	obj.kept[0][len(obj.kept[0])-1] ^= 1
	st := objstore.NewMem()
	if _, err := objstore.PutVerified(ctx, st, "k", obj.reader(ctx), obj.size, obj.crc); !errors.Is(err, objstore.ErrChecksum) {
		t.Fatalf("upload of bytes that changed since the scan: %v, want ErrChecksum", err)
	}
	if _, err := st.Stat(ctx, "k"); !errors.Is(err, objstore.ErrNotFound) {
		t.Fatalf("the refused upload left an object: %v", err)
	}
}

// reopen opens shard name through a new offloading engine (closed at the
// test's end).
func reopen(t *testing.T, e *env, st objstore.Store, name string) (*Engine, shard.Shard) {
	t.Helper()
	en := offloadEngine(e, st, 0, nil, Options{})
	t.Cleanup(func() { en.Close() })
	s, err := en.Open(testCtx(t), name)
	if err != nil {
		t.Fatal(err)
	}
	return en, s
}

// failingStore refuses every Put.
type failingStore struct{ objstore.Store }

func (failingStore) Put(context.Context, string, io.Reader, int64) error {
	return errors.New("store unavailable")
}

// A store that refuses the objects leaves the log alone and shows in
// offload_failures_total and offload_lag_seconds.
func TestOffloadFailureMetrics(t *testing.T) {
	e := newEnv(t, 2)
	a := offloadEngine(e, failingStore{objstore.NewMem()}, 0, nil, Options{})
	defer a.Close()
	s := fill(t, a, "f")
	t0 := time.Now()
	a.offloadPass(t0)
	a.offloadPass(t0.Add(time.Minute))
	if got := testutil.ToFloat64(a.m.offloadFailures); got != 2 {
		t.Fatalf("offload_failures_total %v, want 2", got)
	}
	if got := testutil.ToFloat64(a.m.offloadLag); got != 60 {
		t.Fatalf("offload_lag_seconds %v, want 60 (the first closed ledger waits since the first pass)", got)
	}
	if l := logOf(t, e, "f"); len(l) != 10 {
		t.Fatalf("log %v after failed offloads, want all 10 ledgers", l)
	}
	checkExactlyOnce(t, s)
}

// Retention trims offloaded ledgers by their records' timestamps, like
// the log's.
func TestOffloadRetention(t *testing.T) {
	e := newEnv(t, 2)
	st := objstore.NewMem()
	a := offloadEngine(e, st, 0, nil, Options{})
	defer a.Close()
	s := fill(t, a, "r").(*Shard)
	a.offloadPass(time.Now())
	ctx := testCtx(t)
	// Every record has timestamp 1000 or 1001: a cutoff of 1001 keeps all,
	// 1002 trims every ledger but the last (records 72..79).
	if err := s.retain(ctx, 1001); err != nil {
		t.Fatal(err)
	}
	if low, _ := s.Watermarks(); low != 0 {
		t.Fatalf("low %d after retention at 1001, want 0", low)
	}
	if err := s.retain(ctx, 1002); err != nil {
		t.Fatal(err)
	}
	if low, _ := s.Watermarks(); low != 72 {
		t.Fatalf("low %d after retention at 1002, want 72", low)
	}
	if objs, _ := st.List(ctx, "journal/"); len(objs) != 0 {
		t.Fatalf("%d objects left after retention trimmed every offloaded ledger", len(objs))
	}
	if got := readAll(t, s); len(got) != 8 || got[0].Offset != 72 {
		t.Fatalf("read %d records after retention", len(got))
	}
}

// A ledger larger than the S3 part size and the offload buffer goes to a
// real S3 server (MinIO) as a streamed multipart upload whose CRC-32C the
// server checks, and reads back from the object.
func TestOffloadMinIOStreamed(t *testing.T) {
	srv := s3test.StartMinIO(t)
	ctx := testCtx(t)
	so := srv.Options("journal-streamed")
	so.PartSize = 5 << 20
	st, err := s3store.Open(ctx, so)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, 2)
	a := e.engine(Options{Quorum: Quorum{2, 2, 1}, RollBytes: 6 << 20, Registerer: metrics.NewRegistry(),
		Offload: &OffloadOptions{Store: st, BufferBytes: 1 << 20}, noOffloadLoop: true})
	defer a.Close()
	s, err := a.Create(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	const batches, size = 56, 128 << 10 // 7 MiB: the first ledger rolls at 6 MiB
	for i := range batches {
		v := bytes.Repeat([]byte{byte(i)}, size)
		if _, err := s.Append(ctx, []shard.Record{{Value: v}}); err != nil {
			t.Fatal(err)
		}
	}
	a.offloadPass(time.Now())
	rs, err := a.loadRemote(ctx, "big")
	if err != nil || len(rs) != 1 {
		t.Fatalf("%d ledgers offloaded, %v; want 1", len(rs), err)
	}
	if rs[0].Size <= int64(so.PartSize) {
		t.Fatalf("object of %d bytes: not above the part size", rs[0].Size)
	}
	n := rs[0].End - rs[0].First // one record per entry
	// Entries of a little more than 128 KiB: 7 fit the 1 MiB buffer.
	if got, kept := testutil.ToFloat64(a.m.offloadEntries), 7; got != float64(2*n-uint64(kept)) {
		t.Fatalf("%v entries read for %d entries with %d kept, want %d", got, n, kept, 2*n-uint64(kept))
	}
	if l := logOf(t, e, "big"); len(l) != 1 {
		t.Fatalf("log %v, want only the ledger being written", l)
	}
	got := readAll(t, s)
	if len(got) != batches {
		t.Fatalf("read %d records, want %d", len(got), batches)
	}
	for i, r := range got {
		if len(r.Value) != size || r.Value[0] != byte(i) || r.Value[size-1] != byte(i) {
			t.Fatalf("record %d: %d bytes of %d", i, len(r.Value), r.Value[0])
		}
	}
}
