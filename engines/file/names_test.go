package file

import (
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/quick"

	pvfs "github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

func TestDirNames(t *testing.T) {
	for name, want := range map[string]string{
		"orders/0":  "s-orders%2F0",
		".":         "s-.",
		"..":        "s-..",
		"../escape": "s-..%2Fescape",
		"UPPER":     "s-%55%50%50%45%52",
		"upper":     "s-upper",
		"x%2Fy":     "s-x%252%46y",
		"主题":        "s-%E4%B8%BB%E9%A2%98",
	} {
		if got := dirName(name); got != want {
			t.Errorf("dirName(%q) = %q, want %q", name, got, want)
		}
	}
	long := strings.Repeat("/", 100)
	if d := dirName(long); !strings.HasPrefix(d, hashPrefix) || len(d) > 255 {
		t.Errorf("dirName(long) = %q", d)
	}
	for _, bad := range []string{"s-", "s-A", "s-%2f", "s-%61", "s-%", "s-%4", "x-abc", "h-ABC", "s-a/b"} {
		if _, _, ok := decodeDirName(bad); ok {
			t.Errorf("decodeDirName(%q) accepted a non-canonical name", bad)
		}
	}
	// Round trip and case safety: an encoding never equals another one up
	// to case.
	f := func(name string) bool {
		if name == "" {
			return true
		}
		d := dirName(name)
		if strings.HasPrefix(d, hashPrefix) {
			return len(d) < 255
		}
		got, hashed, ok := decodeDirName(d)
		return ok && !hashed && got == name && len(d) <= maxEncodedName &&
			!strings.ContainsAny(stripEscapes(d), "ABCDEFGHIJKLMNOPQRSTUVWXYZ/\\\x00")
	}
	if err := quick.Check(f, nil); err != nil {
		t.Fatal(err)
	}
}

// stripEscapes removes %XX escapes: what remains must be lower-case.
func stripEscapes(d string) string {
	var b strings.Builder
	for i := 0; i < len(d); i++ {
		if d[i] == '%' {
			i += 2
			continue
		}
		b.WriteByte(d[i])
	}
	return b.String()
}

// TestLongNames: names longer than a file name can be are stored under a
// hash and listed, opened and deleted by their real name.
func TestLongNames(t *testing.T) {
	mem := vfs.NewMem()
	e := openEngine(t, mem, "/d", Options{})
	names := []string{strings.Repeat("a", 1024), strings.Repeat("é/", 256), strings.Repeat("a", 1023) + "b"}
	for i, n := range names {
		s := mustCreate(t, e, n)
		for range i + 1 {
			mustAppend(t, s, rec(i, 10))
		}
	}
	e.Close()
	e = openEngine(t, mem, "/d", Options{})
	defer e.Close()
	got, err := e.List(bg)
	want := slices.Clone(names)
	slices.Sort(want)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("List = %d names, %v", len(got), err)
	}
	for i, n := range names {
		if _, high := mustOpen(t, e, n).Watermarks(); high != uint64(i+1) {
			t.Fatalf("name %d: high %d", i, high)
		}
	}
	if err := e.Delete(bg, names[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Open(bg, names[0]); !errors.Is(err, shard.ErrNotFound) {
		t.Fatalf("Open after Delete = %v", err)
	}
}

// countFS counts the segment files open at once.
type countFS struct {
	vfs.FS
	open, max atomic.Int64
}

func (c *countFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !isSegment(name) {
		return f, err
	}
	n := c.open.Add(1)
	for m := c.max.Load(); n > m && !c.max.CompareAndSwap(m, n); m = c.max.Load() {
	}
	return &countFile{File: f, c: c}, nil
}

func (c *countFS) Open(name string, opts ...pvfs.OpenOption) (vfs.File, error) {
	f, err := c.FS.Open(name, opts...)
	return c.wrap(name, f, err)
}

func (c *countFS) Create(name string, cat pvfs.DiskWriteCategory) (vfs.File, error) {
	f, err := c.FS.Create(name, cat)
	return c.wrap(name, f, err)
}

func (c *countFS) OpenReadWrite(name string, cat pvfs.DiskWriteCategory, opts ...pvfs.OpenOption) (vfs.File, error) {
	f, err := c.FS.OpenReadWrite(name, cat, opts...)
	return c.wrap(name, f, err)
}

type countFile struct {
	vfs.File
	c      *countFS
	closed atomic.Bool
}

func (f *countFile) Close() error {
	if !f.closed.Swap(true) {
		f.c.open.Add(-1)
	}
	return f.File.Close()
}

// TestOpenFilesBounded: many shards with many segments are read while the
// engine keeps at most MaxOpenSegments sealed-segment files plus one per open
// shard.
func TestOpenFilesBounded(t *testing.T) {
	fs := &countFS{FS: vfs.NewMem()}
	const shards, limit = 20, 5
	e := openEngine(t, fs, "/d", Options{SegmentBytes: 1024, MaxOpenSegments: limit})
	var all []*Shard
	for i := range shards {
		s := mustCreate(t, e, string(rune('a'+i)))
		for j := range 30 {
			mustAppend(t, s, rec(j, 100))
		}
		all = append(all, s)
	}
	for round := range 2 {
		for _, s := range all {
			if got := readAll(t, s); len(got) != 30 {
				t.Fatalf("round %d: %d records", round, len(got))
			}
		}
	}
	if m := fs.max.Load(); m > shards+limit+1 {
		t.Fatalf("up to %d segment files open, want at most %d", m, shards+limit+1)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if n := fs.open.Load(); n != 0 {
		t.Fatalf("%d segment files left open after Close", n)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{},
		{Dir: "/d", Sync: "sometimes"},
		{Dir: "/d", SegmentBytes: 10},
		{Dir: "/d", RetentionBytes: -1},
		{Dir: "/d", RetentionAge: -1},
		{Dir: "/d", IndexIntervalBytes: -1},
	} {
		o.EnsureDefaults()
		if err := o.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", o)
		}
		if _, err := Open(o); err == nil {
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
	o := Options{Dir: "/d"}
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.Sync != SyncBatch || o.SegmentBytes != DefaultSegmentBytes || o.SegmentAge != DefaultSegmentAge || o.IndexIntervalBytes != 4096 || o.SyncInterval != DefaultSyncInterval {
		t.Fatalf("defaults: %+v", o)
	}
}

// TestEngineLock: a second engine on the same directory is refused.
func TestEngineLock(t *testing.T) {
	mem := vfs.NewMem()
	e := openEngine(t, mem, "/d", Options{})
	if _, err := Open(Options{FS: mem, Dir: "/d", Logger: quietLogger}); err == nil {
		t.Fatal("second engine on the same directory opened")
	}
	e.Close()
	e = openEngine(t, mem, "/d", Options{})
	e.Close()
}

// TestMetricsRegistered: every metric is exported under quire_file_*, and a
// second engine on the same registry shares the collectors.
func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := openEngine(t, vfs.NewMem(), "/d", Options{Registerer: reg})
	s := mustCreate(t, e, "s")
	mustAppend(t, s, rec(0, 100), rec(1, 100))
	e2 := openEngine(t, vfs.NewMem(), "/d", Options{Registerer: reg})
	mustAppend(t, mustCreate(t, e2, "t"), rec(2, 100))
	if got := testutil.ToFloat64(e.m.appends); got != 2 {
		t.Fatalf("appends_total = %v, want 2 (shared by both engines)", got)
	}
	if got := testutil.ToFloat64(e.m.records); got != 3 {
		t.Fatalf("appended_records_total = %v", got)
	}
	if got := testutil.ToFloat64(e.m.bytes); got < 300 {
		t.Fatalf("appended_bytes_total = %v", got)
	}
	e.m.deleted.WithLabelValues("retention")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, n := range []string{
		"quire_file_appends_total", "quire_file_appended_records_total", "quire_file_appended_bytes_total",
		"quire_file_fsyncs_total", "quire_file_fsync_duration_seconds", "quire_file_sync_bytes",
		"quire_file_segments_rolled_total", "quire_file_segments_deleted_total",
		"quire_file_recovery_truncations_total", "quire_file_corrupt_shards", "quire_file_open_shards",
	} {
		if !have[n] {
			t.Errorf("metric %s not registered", n)
		}
	}
	e.Close()
	e2.Close()
}
