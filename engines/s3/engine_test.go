package s3_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/s3"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/shard"
)

// faultyStore fails Puts and Deletes on demand.
type faultyStore struct {
	objstore.Store
	failPut, failDelete atomic.Bool
	gets                atomic.Int64
}

func (f *faultyStore) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	f.gets.Add(1)
	return f.Store.Get(ctx, key, off, n)
}

var errInjected = errors.New("injected failure")

func (f *faultyStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if f.failPut.Load() {
		return errInjected
	}
	return f.Store.Put(ctx, key, r, size)
}

func (f *faultyStore) Delete(ctx context.Context, key string) error {
	if f.failDelete.Load() {
		return errInjected
	}
	return f.Store.Delete(ctx, key)
}

// faultyKV fails or delays the Puts of index entries.
type faultyKV struct {
	meta.KV
	mode        atomic.Int32 // one of the kv* constants
	gate        chan struct{}
	entered     chan struct{} // a Put is waiting for gate (kvBlock)
	failDeletes atomic.Bool   // of index entries
}

func (f *faultyKV) Delete(ctx context.Context, key string, opts ...meta.WriteOption) (uint64, error) {
	if isIndexKey(key) && f.failDeletes.Load() {
		return 0, meta.ErrNotLeader
	}
	return f.KV.Delete(ctx, key, opts...)
}

const (
	kvOK        = iota
	kvFail      // not applied, plain error
	kvAmbApply  // applied, then ErrAmbiguous
	kvAmbLost   // not applied, ErrAmbiguous
	kvBlock     // wait for gate
	kvAmbNoRead // ErrAmbiguous, and reads fail too
)

func isIndexKey(key string) bool { return strings.Contains(key, "/objects/") }

// isMarker tells an index entry without records (a writer's claim, or
// what a trim leaves of an entry that replaced one).
func isMarker(value []byte) bool {
	var e struct{ Count int }
	return json.Unmarshal(value, &e) == nil && e.Count == 0
}

func (f *faultyKV) Put(ctx context.Context, key string, value []byte, opts ...meta.WriteOption) (meta.KeyValue, error) {
	if !isIndexKey(key) {
		return f.KV.Put(ctx, key, value, opts...)
	}
	if isMarker(value) {
		// A trim replacing an entry with a marker is one of its deletes.
		if f.failDeletes.Load() && len(opts) == 0 {
			return meta.KeyValue{}, meta.ErrNotLeader
		}
		return f.KV.Put(ctx, key, value, opts...)
	}
	switch f.mode.Load() {
	case kvFail:
		return meta.KeyValue{}, meta.ErrNotLeader
	case kvAmbApply:
		if _, err := f.KV.Put(ctx, key, value, opts...); err != nil {
			return meta.KeyValue{}, err
		}
		return meta.KeyValue{}, meta.ErrAmbiguous
	case kvAmbLost, kvAmbNoRead:
		return meta.KeyValue{}, meta.ErrAmbiguous
	case kvBlock:
		select {
		case f.entered <- struct{}{}:
		default:
		}
		<-f.gate
	}
	return f.KV.Put(ctx, key, value, opts...)
}

func (f *faultyKV) Get(ctx context.Context, key string, opts ...meta.ReadOption) (meta.KeyValue, error) {
	if isIndexKey(key) && f.mode.Load() == kvAmbNoRead {
		return meta.KeyValue{}, meta.ErrNotLeader
	}
	return f.KV.Get(ctx, key, opts...)
}

type env struct {
	t     *testing.T
	store *faultyStore
	kv    *faultyKV
	tweak func(*s3.Options)
}

func newEnv(t *testing.T, tweak func(*s3.Options)) *env {
	return &env{t: t, store: &faultyStore{Store: objstore.NewMem()}, kv: &faultyKV{KV: newMeta(t), gate: make(chan struct{}), entered: make(chan struct{}, 1)}, tweak: tweak}
}

func (v *env) open() *s3.Engine {
	v.t.Helper()
	opts := s3.Options{Store: v.store, Meta: v.kv, FlushInterval: -1, Logger: quiet}
	if v.tweak != nil {
		v.tweak(&opts)
	}
	e, err := s3.Open(context.Background(), opts)
	if err != nil {
		v.t.Fatal(err)
	}
	v.t.Cleanup(func() { e.Close() })
	return e
}

func (v *env) objects() []string {
	v.t.Helper()
	infos, err := v.store.List(context.Background(), "")
	if err != nil {
		v.t.Fatal(err)
	}
	var keys []string
	for _, o := range infos {
		keys = append(keys, o.Key)
	}
	return keys
}

// indexEntries counts the index entries that name objects (not markers).
func (v *env) indexEntries() int {
	v.t.Helper()
	res, err := v.kv.List(context.Background(), s3.DefaultMetaPrefix+"objects/", meta.ListOptions{})
	if err != nil {
		v.t.Fatal(err)
	}
	n := 0
	for _, kv := range res.KVs {
		if !isMarker(kv.Value) {
			n++
		}
	}
	return n
}

// waitFor polls cond until it holds, failing the test after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func recs(n, size int, tag string) []shard.Record {
	out := make([]shard.Record, n)
	for i := range out {
		out[i] = shard.Record{Timestamp: 1000 + int64(i), Key: []byte(tag), Value: bytes.Repeat([]byte{byte(i)}, size)}
	}
	return out
}

func mustAppend(t *testing.T, s shard.Shard, rs []shard.Record) uint64 {
	t.Helper()
	first, err := s.Append(context.Background(), rs)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return first
}

func readKeys(t *testing.T, s shard.Shard) []string {
	t.Helper()
	low, high := s.Watermarks()
	var out []string
	for from := low; from < high; {
		got, err := s.Read(context.Background(), from, shard.Limits{})
		if err != nil {
			t.Fatalf("Read(%d): %v", from, err)
		}
		for _, r := range got {
			out = append(out, string(r.Key))
		}
		from += uint64(len(got))
	}
	return out
}

// TestFailedAppendsInvisible: an append whose PUT or index commit fails
// returns an error, none of its records become visible, its object does not
// stay behind, and the next append takes the same offsets.
func TestFailedAppendsInvisible(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	e := v.open()
	s, err := e.Create(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, recs(2, 10, "ok1"))

	v.store.failPut.Store(true)
	if _, err := s.Append(ctx, recs(3, 10, "lost-put")); !errors.Is(err, errInjected) {
		t.Fatalf("Append with a failing PUT = %v, want the injected error", err)
	}
	v.store.failPut.Store(false)

	v.kv.mode.Store(kvFail)
	if _, err := s.Append(ctx, recs(3, 10, "lost-commit")); !errors.Is(err, meta.ErrNotLeader) {
		t.Fatalf("Append with a failing commit = %v, want ErrNotLeader", err)
	}
	v.kv.mode.Store(kvAmbLost)
	if _, err := s.Append(ctx, recs(3, 10, "lost-ambiguous")); !errors.Is(err, meta.ErrAmbiguous) {
		t.Fatalf("Append with a lost ambiguous commit = %v, want ErrAmbiguous", err)
	}
	if _, h := s.Watermarks(); h != 2 {
		t.Fatalf("high = %d after failed appends, want 2", h)
	}
	if n := len(v.objects()); n != 1 {
		t.Fatalf("%d objects after failed appends, want 1 (failed appends' objects deleted): %q", n, v.objects())
	}
	v.kv.mode.Store(kvAmbApply)
	if first := mustAppend(t, s, recs(2, 10, "ok2")); first != 2 {
		t.Fatalf("append after failures at %d, want 2", first)
	}
	v.kv.mode.Store(kvOK)
	mustAppend(t, s, recs(1, 10, "ok3"))
	want := []string{"ok1", "ok1", "ok2", "ok2", "ok3"}
	if got := readKeys(t, s); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("records = %q, want %q", got, want)
	}
	// After reopening the same.
	e.Close()
	s2, err := v.open().Open(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	if got := readKeys(t, s2); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("records after reopen = %q, want %q", got, want)
	}
}

// TestUnknownCommitFailsShard: when a commit's outcome cannot be learned the
// shard refuses appends until reopened, and reopening shows the truth.
func TestUnknownCommitFailsShard(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	e := v.open()
	s, _ := e.Create(ctx, "u")
	mustAppend(t, s, recs(1, 10, "a"))
	v.kv.mode.Store(kvAmbNoRead)
	if _, err := s.Append(ctx, recs(1, 10, "b")); err == nil {
		t.Fatal("append with an unknown outcome succeeded")
	}
	v.kv.mode.Store(kvOK)
	if _, err := s.Append(ctx, recs(1, 10, "c")); !errors.Is(err, shard.ErrFailed) {
		t.Fatalf("append on a failed shard = %v, want ErrFailed", err)
	}
	if got, err := s.Read(ctx, 0, shard.Limits{}); err != nil || len(got) != 1 {
		t.Fatalf("failed shard still reads: %d records, %v", len(got), err)
	}
	e.Close()
	s2, err := v.open().Open(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s2, recs(1, 10, "d"))
	if got := readKeys(t, s2); strings.Join(got, ",") != "a,d" {
		t.Fatalf("after reopen = %q, want a,d", got)
	}
}

// TestAckAfterIndexCommit: while the index commit is held, the object is in
// the store but the append has not returned and no reader sees its records.
func TestAckAfterIndexCommit(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	s, _ := v.open().Create(ctx, "ack")
	v.kv.mode.Store(kvBlock)
	done := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, recs(4, 10, "x"))
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for len(v.objects()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("object never written")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("append returned (%v) before its index entry was committed", err)
	default:
	}
	if _, h := s.Watermarks(); h != 0 {
		t.Fatalf("high = %d before the commit, want 0", h)
	}
	if got, err := s.Read(ctx, 0, shard.Limits{}); err != nil || len(got) != 0 {
		t.Fatalf("Read before the commit = %d records, %v", len(got), err)
	}
	close(v.kv.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v.indexEntries() != 1 {
		t.Fatalf("index entries = %d, want 1", v.indexEntries())
	}
	if _, h := s.Watermarks(); h != 4 {
		t.Fatalf("high = %d after the commit, want 4", h)
	}
}

// TestOrphansRemovedAtOpen: an object whose commit failed and whose delete
// failed too is removed when the shard is next opened.
func TestOrphansRemovedAtOpen(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	e := v.open()
	s, _ := e.Create(ctx, "o")
	mustAppend(t, s, recs(1, 10, "kept"))
	v.kv.mode.Store(kvFail)
	v.store.failDelete.Store(true)
	if _, err := s.Append(ctx, recs(1, 10, "orphan")); err == nil {
		t.Fatal("append succeeded")
	}
	v.kv.mode.Store(kvOK)
	v.store.failDelete.Store(false)
	if n := len(v.objects()); n != 2 {
		t.Fatalf("%d objects, want 2 (one orphan)", n)
	}
	e.Close()
	s2, err := v.open().Open(ctx, "o")
	if err != nil {
		t.Fatal(err)
	}
	// The cleanup runs in the background before the first append is written.
	mustAppend(t, s2, recs(1, 10, "after"))
	if n := len(v.objects()); n != 2 {
		t.Fatalf("%d objects after reopen and one append, want 2: %q", n, v.objects())
	}
}

// TestBatching: concurrent appends share objects, objects stay within
// FlushBytes (unless one append alone is larger), and each append's records
// are contiguous.
func TestBatching(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, func(o *s3.Options) { o.FlushInterval, o.FlushBytes = 200*time.Millisecond, 1000 })
	s, _ := v.open().Create(ctx, "b")
	const appenders = 24
	var wg sync.WaitGroup
	firsts := make([]uint64, appenders)
	for i := range appenders {
		wg.Go(func() { firsts[i] = mustAppend(t, s, recs(3, 100, fmt.Sprint(i))) }) // 303 bytes
	}
	wg.Wait()
	big := mustAppend(t, s, recs(30, 100, "big")) // 3030 bytes: one object of its own
	objs := v.objects()
	if len(objs) >= appenders || len(objs) < appenders/3+1 {
		t.Fatalf("%d objects for %d concurrent appends of 303 bytes with FlushBytes 1000, want %d..%d", len(objs), appenders, appenders/3+1, appenders-1)
	}
	got, err := s.Read(ctx, 0, shard.Limits{MaxRecords: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range firsts {
		for j := range 3 {
			if k := string(got[f+uint64(j)].Key); k != fmt.Sprint(i) {
				t.Fatalf("offset %d: key %q, want %d (append not contiguous)", f+uint64(j), k, i)
			}
		}
	}
	if big != appenders*3 || len(got) != appenders*3+30 {
		t.Fatalf("big append at %d, %d records; want %d, %d", big, len(got), appenders*3, appenders*3+30)
	}
}

// TestTrimDeletesObjects: Trim and retention delete whole objects and their
// index entries, never an object holding records at or above low.
func TestTrimDeletesObjects(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	s, _ := v.open().Create(ctx, "t")
	for range 10 {
		mustAppend(t, s, recs(10, 10, "r")) // one object per append: offsets 10i..10i+9
	}
	if err := s.Trim(ctx, 35); err != nil {
		t.Fatal(err)
	}
	if n, m := len(v.objects()), v.indexEntries(); n != 7 || m != 7 {
		t.Fatalf("after Trim(35): %d objects, %d index entries; want 7, 7", n, m)
	}
	if got, err := s.Read(ctx, 35, shard.Limits{MaxRecords: 1}); err != nil || got[0].Offset != 35 {
		t.Fatalf("Read(35) after Trim = %v, %v", got, err)
	}
}

func TestRetention(t *testing.T) {
	ctx := context.Background()
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	clock := func() time.Time { return time.UnixMilli(now.Load()) }

	t.Run("Bytes", func(t *testing.T) {
		v := newEnv(t, func(o *s3.Options) { o.RetentionBytes = 3000; o.Now = clock })
		s, _ := v.open().Create(ctx, "rb")
		for range 10 {
			mustAppend(t, s, recs(10, 100, "r")) // 1010 payload bytes per object
		}
		// Keeps the newest objects that still hold >= 3000 bytes: 3 of
		// them. Retention runs in the background, soon after the appends.
		waitFor(t, "retention to move low to 70", func() bool { low, _ := s.Watermarks(); return low >= 70 })
		if low, high := s.Watermarks(); low != 70 || high != 100 {
			t.Fatalf("watermarks after retention = %d, %d; want 70, 100", low, high)
		}
		waitFor(t, "retention to delete 7 objects", func() bool { return len(v.objects()) <= 3 })
		if n, m := len(v.objects()), v.indexEntries(); n != 3 || m != 3 {
			t.Fatalf("%d objects, %d index entries; want 3, 3", n, m)
		}
	})
	t.Run("Age", func(t *testing.T) {
		v := newEnv(t, func(o *s3.Options) { o.RetentionAge = time.Hour; o.Now = clock })
		s, _ := v.open().Create(ctx, "ra")
		for i := range 5 {
			rs := recs(2, 10, "r")
			for j := range rs {
				rs[j].Timestamp = now.Load() + int64(i)*int64(time.Minute/time.Millisecond)
			}
			mustAppend(t, s, rs)
		}
		now.Add(int64(time.Hour/time.Millisecond) + 3*int64(time.Minute/time.Millisecond)) // objects 0..2 are older than an hour
		mustAppend(t, s, []shard.Record{{Value: []byte("new")}})
		waitFor(t, "retention to move low to 6", func() bool { low, _ := s.Watermarks(); return low >= 6 })
		if low, _ := s.Watermarks(); low != 6 {
			t.Fatalf("low after age retention = %d, want 6", low)
		}
		waitFor(t, "retention to delete 3 objects", func() bool { return len(v.objects()) <= 3 })
		if n := len(v.objects()); n != 3 {
			t.Fatalf("%d objects, want 3", n)
		}
	})
}

func TestCorruptObject(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	e := v.open()
	s, _ := e.Create(ctx, "c")
	mustAppend(t, s, recs(3, 10, "x"))
	e.Close()
	key := v.objects()[0]
	b, _ := v.store.Get(ctx, key, 0, -1)
	b[len(b)-1] ^= 1
	if err := v.store.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}
	s2, err := v.open().Open(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	var ce *shard.CorruptError
	if _, err := s2.Read(ctx, 0, shard.Limits{}); !errors.Is(err, shard.ErrCorrupt) || !errors.As(err, &ce) || ce.File != key {
		t.Fatalf("Read of a corrupt object = %v, want a CorruptError naming %s", err, key)
	}
}

func TestDeleteRemovesEverything(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	e := v.open()
	s, _ := e.Create(ctx, "d")
	keep, _ := e.Create(ctx, "keep")
	for range 3 {
		mustAppend(t, s, recs(2, 10, "x"))
	}
	mustAppend(t, keep, recs(1, 10, "k"))
	if err := e.Delete(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if n, m := len(v.objects()), v.indexEntries(); n != 1 || m != 1 {
		t.Fatalf("after Delete: %d objects, %d index entries; want 1, 1 (the other shard's)", n, m)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, c := range []struct {
		opts s3.Options
		want string
	}{
		{s3.Options{Store: objstore.NewMem()}, "Meta is required"},
		{s3.Options{Meta: &faultyKV{}}, "Endpoint is required"},
		{s3.Options{Meta: &faultyKV{}, Store: objstore.NewMem(), MetaPrefix: "x"}, "MetaPrefix"},
		{s3.Options{Meta: &faultyKV{}, Store: objstore.NewMem(), Prefix: "/bad"}, "Prefix"},
		{s3.Options{Meta: &faultyKV{}, Store: objstore.NewMem(), FlushBytes: -1}, "FlushBytes"},
		{s3.Options{Meta: &faultyKV{}, Store: objstore.NewMem(), RetentionAge: -1}, "Retention"},
	} {
		if _, err := s3.Open(context.Background(), c.opts); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%+v) = %v, want an error containing %q", c.opts, err, c.want)
		}
	}
}

// TestInterruptedTrim: a trim whose index-entry deletes failed (as if the
// node had crashed after moving low) leaves entries and objects below low;
// reopening deletes them and the records at and above low stay readable.
func TestInterruptedTrim(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	e := v.open()
	s, _ := e.Create(ctx, "it")
	for range 5 {
		mustAppend(t, s, recs(10, 10, "r"))
	}
	v.kv.failDeletes.Store(true)
	if err := s.Trim(ctx, 25); err != nil {
		t.Fatal(err)
	}
	v.kv.failDeletes.Store(false)
	if n, m := len(v.objects()), v.indexEntries(); n != 5 || m != 5 {
		t.Fatalf("after a trim whose deletes failed: %d objects, %d entries; want 5, 5", n, m)
	}
	e.Close()
	s2, err := v.open().Open(ctx, "it")
	if err != nil {
		t.Fatal(err)
	}
	if low, high := s2.Watermarks(); low != 25 || high != 50 {
		t.Fatalf("watermarks after reopen = %d, %d; want 25, 50", low, high)
	}
	mustAppend(t, s2, recs(1, 10, "after")) // waits for the cleanup
	if n, m := len(v.objects()), v.indexEntries(); n != 4 || m != 4 {
		t.Fatalf("after reopen: %d objects, %d entries; want 4, 4", n, m)
	}
	if got := readKeys(t, s2); len(got) != 26 {
		t.Fatalf("read %d records from low, want 26", len(got))
	}
}

// TestMetrics: the engine counts appends, objects and deletions.
func TestMetrics(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	v := newEnv(t, func(o *s3.Options) { o.Registerer = reg })
	s, _ := v.open().Create(ctx, "m")
	for range 3 {
		mustAppend(t, s, recs(2, 10, "x"))
	}
	if err := s.Trim(ctx, 2); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{
		"quire_s3_appends_total": 3, "quire_s3_appended_records_total": 6, "quire_s3_appended_bytes_total": 66,
		"quire_s3_objects_written_total": 3, "quire_s3_open_shards": 1,
	} {
		if got := gather(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := gather(t, reg, "quire_s3_objects_deleted_total"); got != 1 {
		t.Errorf("quire_s3_objects_deleted_total = %v, want 1", got)
	}
}

// gather sums the samples of a counter or gauge family.
func gather(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// TestReadFetchesOnce: readers catching up together (with read-ahead) fetch
// every object once.
func TestReadFetchesOnce(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	e := v.open()
	s, _ := e.Create(ctx, "once")
	for range 10 {
		mustAppend(t, s, recs(50, 100, "r"))
	}
	e.Close()
	s2, err := v.open().Open(ctx, "once") // empty cache
	if err != nil {
		t.Fatal(err)
	}
	v.store.gets.Store(0)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for from := uint64(0); from < 500; {
				got, err := s2.Read(ctx, from, shard.Limits{MaxRecords: 7})
				if err != nil || len(got) == 0 {
					t.Errorf("Read(%d) = %d records, %v", from, len(got), err)
					return
				}
				from += uint64(len(got))
			}
		})
	}
	wg.Wait()
	if n := v.store.gets.Load(); n != 10 {
		t.Fatalf("%d GETs for 10 objects read by 4 readers, want 10", n)
	}
}

// TestFencing: a second engine opening a shard fences the first: an append
// of the first that was in flight, and every later append, trim and seal,
// fail with ErrFenced; nothing of them reaches the index, the object of the
// one in flight does not stay behind, and a trim of the second writer does
// not reopen the key the first would have committed next.
func TestFencing(t *testing.T) {
	ctx := context.Background()
	v := newEnv(t, nil)
	s1, err := v.open().Create(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s1, recs(2, 10, "a")) // [0,2)

	// An append of the first writer whose commit waits until the second
	// writer has opened the shard, appended, and trimmed everything
	// before its own append away.
	v.kv.mode.Store(kvBlock)
	inflight := make(chan error, 1)
	go func() {
		_, err := s1.Append(ctx, recs(1, 10, "lost"))
		inflight <- err
	}()
	<-v.kv.entered
	v.kv.mode.Store(kvOK)
	s2, err := v.open().Open(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	if first := mustAppend(t, s2, recs(3, 10, "b")); first != 2 {
		t.Fatalf("second writer's append at %d, want 2", first)
	}
	if err := s2.Trim(ctx, 5); err != nil {
		t.Fatal(err)
	}
	close(v.kv.gate)
	if err := <-inflight; !errors.Is(err, s3.ErrFenced) || !errors.Is(err, shard.ErrFailed) {
		t.Fatalf("first writer's append in flight = %v, want ErrFenced and ErrFailed", err)
	}
	if _, err := s1.Append(ctx, recs(1, 10, "late")); !errors.Is(err, s3.ErrFenced) {
		t.Fatalf("first writer's next append = %v, want ErrFenced", err)
	}
	if err := s1.Trim(ctx, 1); !errors.Is(err, s3.ErrFenced) {
		t.Fatalf("first writer's trim = %v, want ErrFenced", err)
	}
	if err := s1.Seal(ctx); !errors.Is(err, s3.ErrFenced) {
		t.Fatalf("first writer's seal = %v, want ErrFenced", err)
	}

	if first := mustAppend(t, s2, recs(1, 10, "c")); first != 5 {
		t.Fatalf("second writer's append after the trim at %d, want 5", first)
	}
	if got := readKeys(t, s2); strings.Join(got, ",") != "c" {
		t.Fatalf("second writer reads %q, want [c]", got)
	}
	if n, m := len(v.objects()), v.indexEntries(); n != 1 || m != 1 {
		t.Fatalf("%d objects, %d index entries; want 1, 1 (%q)", n, m, v.objects())
	}
	s3h, err := v.open().Open(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	if low, high := s3h.Watermarks(); low != 5 || high != 6 {
		t.Fatalf("watermarks after a third open = %d, %d; want 5, 6", low, high)
	}
	if got := readKeys(t, s3h); strings.Join(got, ",") != "c" {
		t.Fatalf("third writer reads %q, want [c]", got)
	}
	if _, err := s2.Append(ctx, recs(1, 10, "d")); !errors.Is(err, s3.ErrFenced) {
		t.Fatalf("second writer's append after a third open = %v, want ErrFenced", err)
	}
}
