package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// offloadOpts are options with offload to st that never runs a pass by
// itself (tests call pass).
func offloadOpts(st objstore.Store, lag time.Duration) Options {
	return Options{
		SegmentBytes: 2048, IndexIntervalBytes: 256, offloadManual: true,
		Offload: &OffloadOptions{Store: st, DeleteLag: lag, Interval: time.Hour, RetryMin: time.Millisecond, RetryMax: time.Millisecond, BlockBytes: 512, CacheBytes: 4096},
	}
}

// appendN appends n records of about size bytes, one per call, and returns
// them with their offsets.
func appendN(t testing.TB, s shard.Shard, from, n, size int) []shard.Record {
	t.Helper()
	var out []shard.Record
	for i := from; i < from+n; i++ {
		r := rec(i, size)
		off := mustAppend(t, s, r)
		out = append(out, withOffset(r, off))
	}
	return out
}

// localSegments counts the shard's local segment files.
func localSegments(t testing.TB, fs vfs.FS, s *Shard) (logs, idxs int) {
	t.Helper()
	files, err := fs.List(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, segExt) {
			logs++
		}
		if strings.HasSuffix(f, idxExt) {
			idxs++
		}
	}
	return logs, idxs
}

func objectKeys(t testing.TB, st objstore.Store) []string {
	t.Helper()
	infos, err := st.List(bg, "")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, i := range infos {
		keys = append(keys, i.Key)
	}
	return keys
}

func TestOffloadReadsThroughAndTrims(t *testing.T) {
	fs := vfs.NewMem()
	st := objstore.NewMem()
	reg := prometheus.NewRegistry()
	o := offloadOpts(st, 0)
	o.Registerer = reg
	e := openEngine(t, fs, "/d", o)
	s := mustCreate(t, e, "orders/0")
	want := appendN(t, s, 0, 60, 200)
	nsegs := len(s.segs)
	if nsegs < 4 {
		t.Fatalf("only %d segments", nsegs)
	}
	e.off.pass(bg)
	if logs, idxs := localSegments(t, fs, s); logs != 1 || idxs != 0 {
		t.Fatalf("after offload: %d local segments and %d indexes, want only the active one", logs, idxs)
	}
	if n := len(objectKeys(t, st)); n != 2*(nsegs-1) {
		t.Fatalf("%d objects, want %d (segment and index of each sealed segment)", n, 2*(nsegs-1))
	}
	if got := testutil.ToFloat64(e.m.offloadSegments); got != float64(nsegs-1) {
		t.Fatalf("quire_offload_segments_total = %v, want %d", got, nsegs-1)
	}
	if got := testutil.ToFloat64(e.m.offloadBytes); got <= 0 {
		t.Fatalf("quire_offload_bytes_total = %v", got)
	}
	if got := testutil.ToFloat64(e.m.offloadLag); got != 0 {
		t.Fatalf("quire_offload_lag_seconds = %v after a complete pass", got)
	}
	checkSame(t, readAll(t, s), want)
	// Small reads (through the block cache) and time lookups.
	for _, off := range []uint64{0, 7, 33, 59} {
		recs, err := s.Read(bg, off, shard.Limits{MaxRecords: 1})
		if err != nil || len(recs) != 1 {
			t.Fatalf("Read(%d): %v %v", off, recs, err)
		}
		checkSame(t, recs, want[off:off+1])
		got, err := s.OffsetForTime(bg, want[off].Timestamp)
		if err != nil || got != off {
			t.Fatalf("OffsetForTime(%d) = %d, %v; want %d", want[off].Timestamp, got, err, off)
		}
	}
	// Reopen: offloaded segments come from the manifest.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = openEngine(t, fs, "/d", offloadOpts(st, 0))
	s = mustOpen(t, e, "orders/0")
	checkSame(t, readAll(t, s), want)
	want = append(want, appendN(t, s, 60, 20, 200)...)
	e.off.pass(bg)
	checkSame(t, readAll(t, s), want)
	// Trim deletes the objects and the locations of trimmed segments.
	before := len(objectKeys(t, st))
	cut := s.segs[3].base
	if err := s.Trim(bg, cut); err != nil {
		t.Fatal(err)
	}
	e.off.pass(bg) // deletes the trimmed segments' objects
	if after := len(objectKeys(t, st)); after != before-6 {
		t.Fatalf("%d objects after trimming 3 offloaded segments, want %d", after, before-6)
	}
	locs, err := e.off.o.Manifest.Load(bg, "orders/0")
	if err != nil || len(locs) == 0 || locs[0].Base != cut {
		t.Fatalf("manifest after trim: %v %v, want first base %d", locs, err, cut)
	}
	checkSame(t, readAll(t, s), want[cut:])
	// Delete removes every object and record; a new shard of the name
	// starts empty.
	if err := st.Put(bg, e.objectKey("orders/0", 1<<40, segExt), strings.NewReader("unrecorded"), 10); err != nil {
		t.Fatal(err)
	}
	if err := e.Delete(bg, "orders/0"); err != nil {
		t.Fatal(err)
	}
	if keys := objectKeys(t, st); len(keys) != 0 {
		t.Fatalf("objects left after Delete: %v", keys)
	}
	s = mustCreate(t, e, "orders/0")
	if low, high := s.Watermarks(); low != 0 || high != 0 {
		t.Fatalf("recreated shard has watermarks %d, %d", low, high)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOffloadDeleteLag(t *testing.T) {
	fs := vfs.NewMem()
	st := objstore.NewMem()
	clk := newFakeClock()
	o := offloadOpts(st, time.Hour)
	o.Now = clk.Now
	e := openEngine(t, fs, "/d", o)
	defer e.Close()
	s := mustCreate(t, e, "a")
	want := appendN(t, s, 0, 40, 200)
	nsegs := len(s.segs)
	e.off.pass(bg)
	if logs, _ := localSegments(t, fs, s); logs != nsegs {
		t.Fatalf("local copies deleted before the lag: %d of %d left", logs, nsegs)
	}
	if n := len(objectKeys(t, st)); n != 2*(nsegs-1) {
		t.Fatalf("%d objects, want %d", n, 2*(nsegs-1))
	}
	clk.Advance(59 * time.Minute)
	e.off.pass(bg)
	if logs, _ := localSegments(t, fs, s); logs != nsegs {
		t.Fatalf("local copies deleted before the lag: %d of %d left", logs, nsegs)
	}
	clk.Advance(time.Minute)
	e.off.pass(bg)
	if logs, _ := localSegments(t, fs, s); logs != 1 {
		t.Fatalf("%d local segments after the lag, want 1", logs)
	}
	checkSame(t, readAll(t, s), want)
}

// flakyStore fails Puts while failing is set.
type flakyStore struct {
	objstore.Store
	failing atomic.Bool
	puts    atomic.Int64
}

func (f *flakyStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	f.puts.Add(1)
	if f.failing.Load() {
		return errors.New("injected: store unavailable")
	}
	return f.Store.Put(ctx, key, r, size)
}

func TestOffloadRetriesWithBackoff(t *testing.T) {
	fs := vfs.NewMem()
	st := &flakyStore{Store: objstore.NewMem()}
	clk := newFakeClock()
	o := offloadOpts(st, 0)
	o.Now = clk.Now
	o.Offload.RetryMin, o.Offload.RetryMax = time.Second, 4*time.Second
	e := openEngine(t, fs, "/d", o)
	defer e.Close()
	s := mustCreate(t, e, "a")
	want := appendN(t, s, 0, 30, 200)
	sealed := len(s.segs) - 1
	st.failing.Store(true)
	e.off.pass(bg)
	if got := testutil.ToFloat64(e.m.offloadFailures); got != float64(sealed) {
		t.Fatalf("quire_offload_failures_total = %v, want %d", got, sealed)
	}
	// Within the backoff nothing is retried.
	puts := st.puts.Load()
	clk.Advance(500 * time.Millisecond)
	e.off.pass(bg)
	if st.puts.Load() != puts {
		t.Fatal("retried before the backoff elapsed")
	}
	clk.Advance(10 * time.Second)
	if e.off.pass(bg); testutil.ToFloat64(e.m.offloadLag) < 10 {
		t.Fatalf("quire_offload_lag_seconds = %v, want >= 10 while failing", testutil.ToFloat64(e.m.offloadLag))
	}
	if got := testutil.ToFloat64(e.m.offloadFailures); got != float64(2*sealed) {
		t.Fatalf("quire_offload_failures_total = %v after a retry, want %d", got, 2*sealed)
	}
	st.failing.Store(false)
	clk.Advance(10 * time.Second)
	e.off.pass(bg)
	if got := testutil.ToFloat64(e.m.offloadSegments); got != float64(sealed) {
		t.Fatalf("quire_offload_segments_total = %v, want %d", got, sealed)
	}
	if logs, _ := localSegments(t, fs, s); logs != 1 {
		t.Fatalf("%d local segments, want 1", logs)
	}
	checkSame(t, readAll(t, s), want)
}

// cloneStore copies an in-memory store (the object store "survives" a crash
// of the node).
func cloneStore(t testing.TB, st objstore.Store) *objstore.Mem {
	t.Helper()
	out := objstore.NewMem()
	for _, k := range objectKeys(t, st) {
		b, err := st.Get(bg, k, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		if err := out.Put(bg, k, bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestOffloadCrashAtEachStep crashes the node (crashable file system, copy
// of the object store) after each step of the offload of each segment, and
// checks that the reopened shard holds every record exactly once and that
// the offload resumes and completes.
func TestOffloadCrashAtEachStep(t *testing.T) {
	steps := []offloadStep{stepUploaded, stepVerified, stepRecorded, stepDeleted}
	for _, step := range steps {
		for _, nth := range []int{0, 2} { // the first segment, or one in the middle of a pass
			t.Run(fmt.Sprintf("%s/segment%d", step, nth), func(t *testing.T) {
				mem := vfs.NewCrashableMem()
				st := objstore.NewMem()
				var mu sync.Mutex
				var crashedFS *vfs.MemFS
				var crashedStore *objstore.Mem
				seen := 0
				o := offloadOpts(st, 0)
				o.Offload.Concurrency = 1
				o.offloadHook = func(s offloadStep, _ string, _ uint64) {
					mu.Lock()
					defer mu.Unlock()
					if s != step {
						return
					}
					if seen == nth {
						crashedFS = mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
						crashedStore = cloneStore(t, st)
					}
					seen++
				}
				e := openEngine(t, mem, "/d", o)
				s := mustCreate(t, e, "a")
				want := appendN(t, s, 0, 50, 200)
				e.off.pass(bg)
				if err := e.Close(); err != nil {
					t.Fatal(err)
				}
				if crashedFS == nil {
					t.Fatalf("step %s of segment %d never ran", step, nth)
				}
				e = openEngine(t, crashedFS, "/d", offloadOpts(crashedStore, 0))
				defer e.Close()
				s = mustOpen(t, e, "a")
				checkSame(t, readAll(t, s), want)
				e.off.pass(bg)
				if logs, idxs := localSegments(t, crashedFS, s); logs != 1 || idxs != 0 {
					t.Fatalf("after the resumed offload: %d local segments, %d indexes; want 1, 0", logs, idxs)
				}
				locs, err := e.off.o.Manifest.Load(bg, "a")
				if err != nil || len(locs) != len(s.segs)-1 {
					t.Fatalf("manifest holds %d locations (%v), want %d", len(locs), err, len(s.segs)-1)
				}
				if n := len(objectKeys(t, crashedStore)); n != 2*len(locs) {
					t.Fatalf("%d objects for %d offloaded segments", n, len(locs))
				}
				checkSame(t, readAll(t, s), want)
				// And once more from a clean reopen.
				if err := e.Close(); err != nil {
					t.Fatal(err)
				}
				e = openEngine(t, crashedFS, "/d", offloadOpts(crashedStore, 0))
				checkSame(t, readAll(t, mustOpen(t, e, "a")), want)
			})
		}
	}
}

// TestOffloadCrashDuringTrim crashes after a trim persisted its point but
// before it deleted the offloaded objects: the reopened shard starts at the
// trim point and the next pass deletes the objects.
func TestOffloadCrashDuringTrim(t *testing.T) {
	fs := vfs.NewMem()
	st := objstore.NewMem()
	e := openEngine(t, fs, "/d", offloadOpts(st, 0))
	s := mustCreate(t, e, "a")
	want := appendN(t, s, 0, 50, 200)
	e.off.pass(bg)
	cut := s.segs[2].base
	// A trim whose object deletion is lost: persist TRIM only.
	if err := vfs.WriteFileAtomic(fs, fs.PathJoin(s.dir, trimFile), encodeTrim(cut)); err != nil {
		t.Fatal(err)
	}
	before := len(objectKeys(t, st))
	// And objects a crash left unrecorded below the trim point (uploaded,
	// never recorded): the first pass after the open deletes them too.
	orphan := e.objectKey("a", 1, segExt)
	if err := st.Put(bg, orphan, strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = openEngine(t, fs, "/d", offloadOpts(st, 0))
	defer e.Close()
	s = mustOpen(t, e, "a")
	checkSame(t, readAll(t, s), want[cut:])
	e.off.pass(bg)
	if after := len(objectKeys(t, st)); after != before-4 {
		t.Fatalf("%d objects after the pass, want %d: %v", after, before-4, objectKeys(t, st))
	}
}

func TestOffloadOptionsValidate(t *testing.T) {
	for _, o := range []OffloadOptions{
		{},
		{Store: objstore.NewMem(), DeleteLag: -time.Second},
		{Store: objstore.NewMem(), Prefix: "a//b"},
		{Store: objstore.NewMem(), RetryMin: time.Minute, RetryMax: time.Second},
	} {
		_, err := Open(Options{FS: vfs.NewMem(), Dir: "/d", Offload: &o})
		if err == nil || !strings.Contains(err.Error(), "Offload") {
			t.Errorf("Open with %+v: %v, want an Offload error", o, err)
		}
	}
}

// Retention deletes offloaded segments too: their objects and locations go
// with the next pass.
func TestOffloadRetention(t *testing.T) {
	st := objstore.NewMem()
	o := offloadOpts(st, 0)
	o.RetentionBytes = 6000
	e := openEngine(t, vfs.NewMem(), "/d", o)
	defer e.Close()
	s := mustCreate(t, e, "a")
	appendN(t, s, 0, 40, 200)
	e.off.pass(bg)
	appendN(t, s, 40, 60, 200) // rolls run retention over offloaded segments
	e.off.pass(bg)
	low, _ := s.Watermarks()
	if low == 0 {
		t.Fatal("retention deleted nothing")
	}
	locs, err := e.off.o.Manifest.Load(bg, "a")
	if err != nil {
		t.Fatal(err)
	}
	if len(locs) == 0 || locs[0].Base != s.segs[0].base {
		t.Fatalf("first location %+v, want the first remaining segment %d", locs, s.segs[0].base)
	}
	if n := len(objectKeys(t, st)); n != 2*len(locs) {
		t.Fatalf("%d objects for %d remaining offloaded segments", n, len(locs))
	}
	if got := readAll(t, s); len(got) == 0 || got[0].Offset != low {
		t.Fatalf("read from low %d: %d records", low, len(got))
	}
}

// A shard with offloaded segments refuses to open without Offload instead
// of serving a log with holes.
func TestOffloadedShardNeedsOffload(t *testing.T) {
	fs := vfs.NewMem()
	e := openEngine(t, fs, "/d", offloadOpts(objstore.NewMem(), 0))
	s := mustCreate(t, e, "a")
	appendN(t, s, 0, 30, 200)
	e.off.pass(bg)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = openEngine(t, fs, "/d", Options{})
	defer e.Close()
	if _, err := e.Open(bg, "a"); err == nil || !strings.Contains(err.Error(), "Options.Offload") {
		t.Fatalf("Open without Offload: %v", err)
	}
}

// Readers running while segments are offloaded and their local copies
// deleted under them (background passes every millisecond) read every
// record exactly once, in order.
func TestOffloadConcurrentReaders(t *testing.T) {
	st := objstore.NewMem()
	o := offloadOpts(st, 0)
	o.offloadManual = false
	o.Offload.Interval = time.Millisecond
	fs := vfs.NewMem()
	e := openEngine(t, fs, "/d", o)
	defer e.Close()
	s := mustCreate(t, e, "a")
	var want []shard.Record
	var mu sync.Mutex
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				mu.Lock()
				n := len(want)
				w := want[:n:n]
				mu.Unlock()
				for next := uint64(0); next < uint64(n); {
					recs, err := s.Read(bg, next, shard.Limits{MaxRecords: 7})
					if err != nil {
						t.Errorf("Read(%d): %v", next, err)
						return
					}
					for _, r := range recs {
						if next >= uint64(n) {
							break
						}
						if r.Offset != next || !bytes.Equal(r.Value, w[next].Value) {
							t.Errorf("Read(%d): got offset %d", next, r.Offset)
							return
						}
						next++
					}
				}
			}
		}()
	}
	for i := range 150 {
		r := appendN(t, s, i, 1, 200)
		mu.Lock()
		want = append(want, r...)
		mu.Unlock()
	}
	deadline := time.Now().Add(10 * time.Second)
	for logs, _ := localSegments(t, fs, s); logs > 1; logs, _ = localSegments(t, fs, s) {
		if time.Now().After(deadline) {
			t.Fatalf("%d local segments left", logs)
		}
		time.Sleep(time.Millisecond)
	}
	close(done)
	wg.Wait()
	checkSame(t, readAll(t, s), want)
}

// corruptingStore counts Gets (read-backs) and, while corrupt is set, flips
// a bit of every object put through it, as a faulty network would.
type corruptingStore struct {
	objstore.Store
	gets    atomic.Int64
	corrupt atomic.Bool
}

func (c *corruptingStore) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key, off, n)
}

func (c *corruptingStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return c.Store.Put(ctx, key, c.body(r), size)
}

func (c *corruptingStore) body(r io.Reader) io.Reader {
	if !c.corrupt.Load() {
		return r
	}
	b, err := io.ReadAll(r)
	if err == nil && len(b) > 0 {
		b[len(b)/2] ^= 1
	}
	return bytes.NewReader(b)
}

// checkingStore is a corruptingStore whose inner store checks checksums.
type checkingStore struct{ *corruptingStore }

func (c checkingStore) PutCRC32C(ctx context.Context, key string, r io.Reader, size int64, crc uint32) (bool, error) {
	return c.Store.(objstore.ChecksumPutter).PutCRC32C(ctx, key, c.body(r), size, crc)
}

// TestOffloadChecksums: a segment corrupted on its way to the store is not
// recorded (its offload fails and is retried), whether the store checks the
// CRC-32C sent with the upload or the offloader reads the object back; a
// store that checks it is not read back.
func TestOffloadChecksums(t *testing.T) {
	for _, tc := range []struct {
		name     string
		checking bool
	}{{"StoreChecks", true}, {"ReadBack", false}} {
		t.Run(tc.name, func(t *testing.T) {
			cs := &corruptingStore{Store: objstore.NewMem()}
			var st objstore.Store = cs
			if tc.checking {
				st = checkingStore{cs}
			}
			clk := newFakeClock()
			o := offloadOpts(st, time.Hour) // local copies stay: no reads
			o.Now = clk.Now
			e := openEngine(t, vfs.NewMem(), "/d", o)
			defer e.Close()
			s := mustCreate(t, e, "a")
			want := appendN(t, s, 0, 30, 200)
			sealed := len(s.segs) - 1
			cs.corrupt.Store(true)
			e.off.pass(bg)
			if got := testutil.ToFloat64(e.m.offloadFailures); got != float64(sealed) {
				t.Fatalf("quire_offload_failures_total = %v with corrupted uploads, want %d", got, sealed)
			}
			if got := testutil.ToFloat64(e.m.offloadSegments); got != 0 {
				t.Fatalf("quire_offload_segments_total = %v with corrupted uploads, want 0", got)
			}
			cs.corrupt.Store(false)
			cs.gets.Store(0)
			clk.Advance(time.Minute)
			e.off.pass(bg)
			if got := testutil.ToFloat64(e.m.offloadSegments); got != float64(sealed) {
				t.Fatalf("quire_offload_segments_total = %v, want %d", got, sealed)
			}
			if gets := cs.gets.Load(); tc.checking != (gets == 0) {
				t.Fatalf("%d GETs during the offload of %d segments (store checks CRCs: %v)", gets, sealed, tc.checking)
			}
			// Read-backs count every verified attempt (the corrupted ones
			// too): none where the store checks.
			wantReadBack := 0
			if !tc.checking {
				wantReadBack = 2 * sealed
			}
			if got := testutil.ToFloat64(e.m.offloadReadBack); got != float64(wantReadBack) {
				t.Fatalf("quire_offload_readback_total = %v, want %d (store checks CRCs: %v)", got, wantReadBack, tc.checking)
			}
			checkSame(t, readAll(t, s), want)
		})
	}
}
