package file

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// TestRollBySize: segments roll once they reach SegmentBytes, are named by
// their base offset, get a persisted index, and reads and OffsetForTime
// cross them; everything survives a reopen.
func TestRollBySize(t *testing.T) {
	mem := vfs.NewMem()
	reg := prometheus.NewRegistry()
	o := Options{SegmentBytes: 4096, IndexIntervalBytes: 512, Registerer: reg}
	e := openEngine(t, mem, "/d", o)
	s := mustCreate(t, e, "s")
	var want []shard.Record
	for i := range 100 {
		want = append(want, withOffset(rec(i, 300), mustAppend(t, s, rec(i, 300))))
	}
	bases := dirBases(t, mem, s.dir)
	if len(bases) < 8 {
		t.Fatalf("%d segments for ~33 KiB with 4 KiB segments", len(bases))
	}
	if bases[0] != 0 {
		t.Fatalf("first segment base %d", bases[0])
	}
	for i, b := range bases[:len(bases)-1] {
		size := fileSize(t, mem, mem.PathJoin(s.dir, segFileName(b)))
		if size < o.SegmentBytes || size > o.SegmentBytes+400 {
			t.Errorf("sealed segment %d is %d bytes, want [%d, %d]", b, size, o.SegmentBytes, o.SegmentBytes+400)
		}
		if _, err := mem.Stat(mem.PathJoin(s.dir, idxFileName(b))); err != nil {
			t.Errorf("sealed segment %d has no index: %v", b, err)
		}
		// Segment b holds the records [b, next base).
		got, err := s.Read(bg, b, shard.Limits{MaxRecords: 1})
		if err != nil || len(got) != 1 || got[0].Offset != b {
			t.Fatalf("Read(%d) = %v, %v", b, got, err)
		}
		_ = i
	}
	if got := testutil.ToFloat64(e.m.rolled); got != float64(len(bases)-1) {
		t.Errorf("segments_rolled_total = %v, want %d", got, len(bases)-1)
	}
	checkSame(t, readAll(t, s), want)
	for _, ts := range []int64{0, 1000, 1001, 1050, 1099, 1100} {
		got, err := s.OffsetForTime(bg, ts)
		want := uint64(max(0, min(100, ts-1000)))
		if err != nil || got != want {
			t.Errorf("OffsetForTime(%d) = %d, %v; want %d", ts, got, err, want)
		}
	}
	e.Close()
	e = openEngine(t, mem, "/d", o)
	defer e.Close()
	s = mustOpen(t, e, "s")
	checkSame(t, readAll(t, s), want)
	if off := mustAppend(t, s, rec(100, 300)); off != 100 {
		t.Fatalf("append after reopen at %d", off)
	}
}

// TestRollByAge: with a fake clock, the active segment rolls on the first
// append after SegmentAge, also after a reopen (the creation time is in the
// segment header); an idle segment does not roll by itself.
func TestRollByAge(t *testing.T) {
	mem := vfs.NewMem()
	clock := newFakeClock()
	o := Options{SegmentAge: time.Hour, Now: clock.Now}
	e := openEngine(t, mem, "/d", o)
	s := mustCreate(t, e, "s")
	mustAppend(t, s, rec(0, 10))
	clock.Advance(59 * time.Minute)
	mustAppend(t, s, rec(1, 10))
	if n := len(dirBases(t, mem, s.dir)); n != 1 {
		t.Fatalf("%d segments before SegmentAge", n)
	}
	clock.Advance(2 * time.Minute)
	mustAppend(t, s, rec(2, 10))
	if b := dirBases(t, mem, s.dir); len(b) != 2 || b[1] != 2 {
		t.Fatalf("segments %v after SegmentAge, want [0 2]", b)
	}
	clock.Advance(30 * time.Minute)
	e.Close()
	e = openEngine(t, mem, "/d", o)
	defer e.Close()
	s = mustOpen(t, e, "s")
	clock.Advance(31 * time.Minute)
	if b := dirBases(t, mem, s.dir); len(b) != 2 {
		t.Fatalf("idle segment rolled without an append: %v", b)
	}
	mustAppend(t, s, rec(3, 10))
	if b := dirBases(t, mem, s.dir); len(b) != 3 || b[2] != 3 {
		t.Fatalf("segments %v, want [0 2 3] (age survives reopen)", b)
	}
	checkSame(t, readAll(t, s), []shard.Record{withOffset(rec(0, 10), 0), withOffset(rec(1, 10), 1), withOffset(rec(2, 10), 2), withOffset(rec(3, 10), 3)})
}

// TestRetentionBytes deletes the oldest sealed segments while the rest hold
// at least RetentionBytes; the low watermark follows and survives a reopen.
func TestRetentionBytes(t *testing.T) {
	mem := vfs.NewMem()
	reg := prometheus.NewRegistry()
	o := Options{SegmentBytes: 4096, RetentionBytes: 3 * 4096, Registerer: reg}
	e := openEngine(t, mem, "/d", o)
	s := mustCreate(t, e, "s")
	var want []shard.Record
	var active uint64
	for i := range 200 {
		want = append(want, withOffset(rec(i, 300), mustAppend(t, s, rec(i, 300))))
		bases := dirBases(t, mem, s.dir)
		if bases[len(bases)-1] != active { // rolled: retention ran
			active = bases[len(bases)-1]
			var total int64
			for _, b := range bases {
				total += fileSize(t, mem, mem.PathJoin(s.dir, segFileName(b)))
			}
			first := fileSize(t, mem, mem.PathJoin(s.dir, segFileName(bases[0])))
			if len(bases) > 1 && total-first >= o.RetentionBytes {
				t.Fatalf("after append %d: %d bytes in %d segments; the oldest should have been deleted", i, total, len(bases))
			}
			if total < o.RetentionBytes && i > 100 {
				t.Fatalf("after append %d: only %d bytes retained", i, total)
			}
		}
		if low, _ := s.Watermarks(); low != bases[0] {
			t.Fatalf("low %d, first segment %d", low, bases[0])
		}
	}
	low, high := s.Watermarks()
	if low == 0 || high != 200 {
		t.Fatalf("watermarks (%d, %d)", low, high)
	}
	if _, err := s.Read(bg, low-1, shard.Limits{}); !errors.Is(err, shard.ErrOffsetOutOfRange) {
		t.Fatalf("Read below low = %v", err)
	}
	checkSame(t, readAll(t, s), want[low:])
	deleted := testutil.ToFloat64(e.m.deleted.WithLabelValues("retention"))
	if deleted == 0 || deleted != float64(testutil.ToFloat64(e.m.rolled)+1-float64(len(dirBases(t, mem, s.dir)))) {
		t.Fatalf("segments_deleted_total{retention} = %v", deleted)
	}
	e.Close()
	e = openEngine(t, mem, "/d", o)
	defer e.Close()
	s = mustOpen(t, e, "s")
	if l, h := s.Watermarks(); l != low || h != high {
		t.Fatalf("after reopen (%d, %d), want (%d, %d)", l, h, low, high)
	}
}

// TestRetentionAge deletes sealed segments whose newest record is older than
// RetentionAge, both after a roll and from the periodic check on an idle
// shard; the active segment is never deleted.
func TestRetentionAge(t *testing.T) {
	mem := vfs.NewMem()
	clock := newFakeClock()
	o := Options{SegmentBytes: 2048, RetentionAge: time.Hour, Now: clock.Now}
	e := openEngine(t, mem, "/d", o)
	defer e.Close()
	s := mustCreate(t, e, "s")
	now := func() int64 { return clock.Now().UnixMilli() }
	appendAt := func(i int) {
		r := rec(i, 300)
		r.Timestamp = now()
		mustAppend(t, s, r)
	}
	for i := range 20 { // several segments of old records
		appendAt(i)
	}
	old := dirBases(t, mem, s.dir)
	clock.Advance(90 * time.Minute)
	for i := 20; i < 40; i++ { // the first roll now deletes the old segments
		appendAt(i)
	}
	bases := dirBases(t, mem, s.dir)
	if bases[0] < old[len(old)-1] {
		t.Fatalf("segments %v remain after the clock passed RetentionAge (old: %v)", bases, old)
	}
	low, _ := s.Watermarks()
	if low != bases[0] {
		t.Fatalf("low %d, first segment %d", low, bases[0])
	}
	// Idle shard: the periodic check (called directly instead of waiting a
	// minute) deletes every sealed segment, but not the active one.
	clock.Advance(2 * time.Hour)
	if err := s.enforceRetention(); err != nil {
		t.Fatal(err)
	}
	bases = dirBases(t, mem, s.dir)
	if len(bases) != 1 {
		t.Fatalf("segments %v after every sealed segment expired, want only the active one", bases)
	}
	low, high := s.Watermarks()
	if low != bases[0] || high != 40 {
		t.Fatalf("watermarks (%d, %d), active segment %d", low, high, bases[0])
	}
	if got := readAll(t, s); len(got) != int(high-low) {
		t.Fatalf("read %d records", len(got))
	}
}

// TestTrimDeletesSegments: Trim deletes whole segments below the trim point,
// keeps the low watermark exact, and both survive a reopen.
func TestTrimDeletesSegments(t *testing.T) {
	mem := vfs.NewMem()
	o := Options{SegmentBytes: 2048}
	e := openEngine(t, mem, "/d", o)
	s := mustCreate(t, e, "s")
	var want []shard.Record
	for i := range 60 {
		want = append(want, withOffset(rec(i, 300), mustAppend(t, s, rec(i, 300))))
	}
	before := dirBases(t, mem, s.dir)
	cut := before[3] + 2 // inside the fourth segment
	if err := s.Trim(bg, cut); err != nil {
		t.Fatal(err)
	}
	after := dirBases(t, mem, s.dir)
	if after[0] != before[3] {
		t.Fatalf("segments %v after Trim(%d), want the first to be %d", after, cut, before[3])
	}
	checkSame(t, readAll(t, s), want[cut:])
	if off, _ := s.OffsetForTime(bg, 0); off != cut {
		t.Fatalf("OffsetForTime(0) = %d after Trim(%d)", off, cut)
	}
	e.Close()
	e = openEngine(t, mem, "/d", o)
	defer e.Close()
	s = mustOpen(t, e, "s")
	if low, high := s.Watermarks(); low != cut || high != 60 {
		t.Fatalf("after reopen (%d, %d), want (%d, 60)", low, high, cut)
	}
	checkSame(t, readAll(t, s), want[cut:])
}

// TestIndexRebuild: a missing or damaged index of a sealed segment is rebuilt
// by scanning it, and reads stay correct.
func TestIndexRebuild(t *testing.T) {
	mem := vfs.NewMem()
	o := Options{SegmentBytes: 4096, IndexIntervalBytes: 256}
	want, dir := build(t, mem, "s", 80, 300, o)
	bases := dirBases(t, mem, dir)
	mem.Remove(mem.PathJoin(dir, idxFileName(bases[0])))
	flip(t, mem, mem.PathJoin(dir, idxFileName(bases[1])), idxHeaderSize+30) // an entry: header still valid
	patch(t, mem, mem.PathJoin(dir, idxFileName(bases[2])), 0, []byte("garbage!"))
	e := openEngine(t, mem, "/d", o)
	defer e.Close()
	s := mustOpen(t, e, "s")
	checkSame(t, readAll(t, s), want)
	for _, from := range []uint64{1, bases[1] + 3, bases[2] + 1} {
		got, err := s.Read(bg, from, shard.Limits{MaxRecords: 2})
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, got, want[from:from+2])
	}
	if _, err := mem.Stat(mem.PathJoin(dir, idxFileName(bases[0]))); err != nil {
		t.Fatalf("missing index not rewritten at open: %v", err)
	}
}
