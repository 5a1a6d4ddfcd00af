package file

import (
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// build creates shard name on mem with n records of valSize-byte values and
// closes the engine; it returns the records and the shard directory.
func build(t *testing.T, mem vfs.FS, name string, n, valSize int, o Options) ([]shard.Record, string) {
	t.Helper()
	e := openEngine(t, mem, "/d", o)
	s := mustCreate(t, e, name)
	var want []shard.Record
	for i := 0; i < n; i += 3 {
		var b []shard.Record
		for j := i; j < min(i+3, n); j++ {
			b = append(b, rec(j, valSize))
		}
		first := mustAppend(t, s, b...)
		for k := range b {
			want = append(want, withOffset(b[k], first+uint64(k)))
		}
	}
	dir := s.dir
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return want, dir
}

// dirBases lists the segment bases in a shard directory.
func dirBases(t *testing.T, fs vfs.FS, dir string) []uint64 {
	t.Helper()
	names, err := fs.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, n := range names {
		if b, ok := parseBaseName(n, segExt); ok {
			out = append(out, b)
		}
	}
	return sortU64(out)
}

// positions returns the byte positions of the records of a segment file.
func positions(t *testing.T, fs vfs.FS, path string) []int64 {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	it := recordIter{r: f, pos: segHeaderSize, limit: st.Size(), chunk: 4096}
	var out []int64
	for {
		_, pos, _, status, err := it.next()
		if err == io.EOF {
			return out
		}
		if err != nil || status != recOK {
			t.Fatalf("positions(%s): %v %v at %d", path, err, status, pos)
		}
		out = append(out, pos)
	}
}

func fileSize(t *testing.T, fs vfs.FS, path string) int64 {
	t.Helper()
	st, err := fs.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// patch overwrites bytes of a file at pos (growing it if needed).
func patch(t *testing.T, fs vfs.FS, path string, pos int64, b []byte) {
	t.Helper()
	f, err := fs.OpenReadWrite(path, vfs.CategoryShard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, pos); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func flip(t *testing.T, fs vfs.FS, path string, pos int64) {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, pos); err != nil {
		t.Fatal(err)
	}
	f.Close()
	patch(t, fs, path, pos, []byte{b[0] ^ 0x10})
}

// truncateTo cuts a MemFS file by rewriting it.
func truncateTo(t *testing.T, fs vfs.FS, path string, size int64) {
	t.Helper()
	b, err := vfs.ReadFile(fs, path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fs.Create(path, vfs.CategoryShard)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(b[:size])
	f.Close()
}

func checkCorrupt(t *testing.T, err error, file string, pos int64) {
	t.Helper()
	ce, ok := isCorrupt(err)
	if !ok {
		t.Fatalf("got %v, want a *shard.CorruptError", err)
	}
	if ce.File != file || ce.Offset != pos {
		t.Fatalf("CorruptError names %s at byte %d, want %s at byte %d", ce.File, ce.Offset, file, pos)
	}
}

// TestCorruptSealedSegment flips a byte in a sealed segment: Open reports it
// when VerifySealedOnOpen is set or the segment's index must be rebuilt,
// Read reports it otherwise; other shards keep working throughout.
func TestCorruptSealedSegment(t *testing.T) {
	mem := vfs.NewMem()
	o := Options{SegmentBytes: 2048}
	want, dir := build(t, mem, "bad", 60, 200, o)
	other, _ := build(t, mem, "good", 10, 200, o)
	bases := dirBases(t, mem, dir)
	if len(bases) < 4 {
		t.Fatalf("only %d segments", len(bases))
	}
	b1 := bases[1]
	seg := mem.PathJoin(dir, segFileName(b1))
	pos := positions(t, mem, seg)
	flip(t, mem, seg, pos[3]+recHeaderSize+10) // inside the value of record b1+3
	reg := prometheus.NewRegistry()

	check := func(e *Engine) {
		t.Helper()
		names, err := e.List(bg)
		if err != nil || len(names) != 2 {
			t.Fatalf("List = %v, %v", names, err)
		}
		checkSame(t, readAll(t, mustOpen(t, e, "good")), other)
	}

	o.VerifySealedOnOpen, o.Registerer = true, reg
	e := openEngine(t, mem, "/d", o)
	_, err := e.Open(bg, "bad")
	checkCorrupt(t, err, seg, pos[3])
	check(e)
	if g := testutil.ToFloat64(e.m.corruptShards); g != 1 {
		t.Fatalf("corrupt_shards = %v, want 1", g)
	}
	_, err = e.Open(bg, "bad") // each Open retries
	checkCorrupt(t, err, seg, pos[3])
	e.Close()

	// By default the index summary is trusted at open; Read meets the damage.
	o.VerifySealedOnOpen = false
	e = openEngine(t, mem, "/d", o)
	s := mustOpen(t, e, "bad")
	got, err := s.Read(bg, b1, shard.Limits{MaxRecords: 3})
	if err != nil {
		t.Fatal(err)
	}
	checkSame(t, got, want[b1:b1+3])
	_, err = s.Read(bg, 0, shard.Limits{})
	checkCorrupt(t, err, seg, pos[3])
	_, err = s.Read(bg, b1+3, shard.Limits{})
	checkCorrupt(t, err, seg, pos[3])
	check(e)
	e.Close()

	// Without its index the segment is scanned at open.
	if err := mem.Remove(mem.PathJoin(dir, idxFileName(b1))); err != nil {
		t.Fatal(err)
	}
	e = openEngine(t, mem, "/d", o)
	_, err = e.Open(bg, "bad")
	checkCorrupt(t, err, seg, pos[3])
	check(e)
	e.Close()
}

// TestTruncatedSealedSegment: a sealed segment cut short (what would be a
// torn tail in the last segment) is corruption.
func TestTruncatedSealedSegment(t *testing.T) {
	mem := vfs.NewMem()
	_, dir := build(t, mem, "s", 40, 200, Options{SegmentBytes: 2048})
	seg := mem.PathJoin(dir, segFileName(dirBases(t, mem, dir)[1]))
	pos := positions(t, mem, seg)
	truncateTo(t, mem, seg, pos[len(pos)-1]+20)
	e := openEngine(t, mem, "/d", Options{})
	defer e.Close()
	_, err := e.Open(bg, "s")
	checkCorrupt(t, err, seg, pos[len(pos)-1])
}

// TestCorruptActiveSegment damages a record in the middle of the active
// segment, followed by valid records: Open reports corruption at that record
// and truncates nothing; another shard still opens and serves.
func TestCorruptActiveSegment(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   func(pos int64) int64
	}{
		{"value", func(p int64) int64 { return p + recHeaderSize + 50 }},
		{"crc", func(p int64) int64 { return p + 5 }},
		{"offset", func(p int64) int64 { return p + 9 }},
		{"length", func(p int64) int64 { return p + 1 }},
		{"length-huge", func(p int64) int64 { return p + 3 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := vfs.NewMem()
			_, dir := build(t, mem, "bad", 40, 300, Options{})
			other, _ := build(t, mem, "good", 5, 10, Options{})
			seg := mem.PathJoin(dir, segFileName(0))
			pos := positions(t, mem, seg)
			size := fileSize(t, mem, seg)
			flip(t, mem, seg, tc.at(pos[20]))
			e := openEngine(t, mem, "/d", Options{})
			defer e.Close()
			_, err := e.Open(bg, "bad")
			checkCorrupt(t, err, seg, pos[20])
			if got := fileSize(t, mem, seg); got != size {
				t.Fatalf("corrupt segment changed size: %d, was %d", got, size)
			}
			checkSame(t, readAll(t, mustOpen(t, e, "good")), other)
			if names, _ := e.List(bg); len(names) != 2 {
				t.Fatalf("List = %v", names)
			}
		})
	}
}

// TestTornTail: damage a crash can cause to the last segment is truncated,
// keeping the longest valid prefix.
func TestTornTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		// damage returns how many records survive.
		damage func(t *testing.T, fs vfs.FS, path string, pos []int64, size int64) int
	}{
		{"cut-last-record", func(t *testing.T, fs vfs.FS, path string, pos []int64, size int64) int {
			truncateTo(t, fs, path, size-7)
			return len(pos) - 1
		}},
		{"cut-inside-header", func(t *testing.T, fs vfs.FS, path string, pos []int64, size int64) int {
			truncateTo(t, fs, path, pos[10]+5)
			return 10
		}},
		{"zeros-appended", func(t *testing.T, fs vfs.FS, path string, pos []int64, size int64) int {
			patch(t, fs, path, size, make([]byte, 10000))
			return len(pos)
		}},
		{"garbage-appended", func(t *testing.T, fs vfs.FS, path string, pos []int64, size int64) int {
			g := make([]byte, 5000)
			for i := range g {
				g[i] = byte(rand.IntN(256))
			}
			patch(t, fs, path, size, g)
			return len(pos)
		}},
		{"lost-page-mid-segment", func(t *testing.T, fs vfs.FS, path string, pos []int64, size int64) int {
			// A lost unsynced page with intact (unsynced) pages after it.
			block := (pos[15]/pageSize + 1) * pageSize
			patch(t, fs, path, block, make([]byte, pageSize))
			n := 0
			for n < len(pos) && pos[n]+recordSize(t, fs, path, pos[n]) <= block {
				n++
			}
			return n
		}},
		{"lost-partial-page", func(t *testing.T, fs vfs.FS, path string, pos []int64, size int64) int {
			// The page holding the sync boundary (a record boundary) lost
			// its unsynced part.
			at := pos[12]
			if at%pageSize == 0 {
				t.Fatal("record 12 is page-aligned; pick another")
			}
			end := (at/pageSize + 1) * pageSize
			patch(t, fs, path, at, make([]byte, end-at))
			return 12
		}},
		{"lost-everything", func(t *testing.T, fs vfs.FS, path string, pos []int64, size int64) int {
			patch(t, fs, path, segHeaderSize, make([]byte, size-segHeaderSize))
			return 0
		}},
		{"header-never-synced", func(t *testing.T, fs vfs.FS, path string, pos []int64, size int64) int {
			patch(t, fs, path, 0, make([]byte, size))
			return 0
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := vfs.NewMem()
			want, dir := build(t, mem, "s", 40, 300, Options{})
			seg := mem.PathJoin(dir, segFileName(0))
			pos := positions(t, mem, seg)
			keep := tc.damage(t, mem, seg, pos, fileSize(t, mem, seg))
			reg := prometheus.NewRegistry()
			e := openEngine(t, mem, "/d", Options{Registerer: reg})
			s := mustOpen(t, e, "s")
			checkSame(t, readAll(t, s), want[:keep])
			if g := testutil.ToFloat64(e.m.truncations); g != 1 {
				t.Fatalf("recovery_truncations_total = %v, want 1", g)
			}
			if off := mustAppend(t, s, rec(1000, 100)); off != uint64(keep) {
				t.Fatalf("append after recovery at %d, want %d", off, keep)
			}
			e.Close()
			// Recovery is stable: a second open truncates nothing more.
			e = openEngine(t, mem, "/d", Options{})
			defer e.Close()
			got := readAll(t, mustOpen(t, e, "s"))
			checkSame(t, got[:keep], want[:keep])
			if len(got) != keep+1 {
				t.Fatalf("second open: %d records, want %d", len(got), keep+1)
			}
		})
	}
}

func recordSize(t *testing.T, fs vfs.FS, path string, pos int64) int64 {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4)
	f.ReadAt(b, pos)
	return int64(le.Uint32(b)) + recPrefix
}

// TestCorruptMetadata: a damaged TRIM file is corruption of that shard only.
func TestCorruptMetadata(t *testing.T) {
	mem := vfs.NewMem()
	e := openEngine(t, mem, "/d", Options{})
	s := mustCreate(t, e, "s")
	mustAppend(t, s, rec(0, 10), rec(1, 10))
	if err := s.Trim(bg, 1); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, e, "t")
	e.Close()
	trim := mem.PathJoin(s.dir, trimFile)
	flip(t, mem, trim, 9)
	e = openEngine(t, mem, "/d", Options{})
	defer e.Close()
	_, err := e.Open(bg, "s")
	checkCorrupt(t, err, trim, 0)
	if _, err := e.Open(bg, "t"); err != nil {
		t.Fatal(err)
	}
	if errors.Is(err, shard.ErrNotFound) {
		t.Fatal("corrupt shard reported as not found")
	}
}
