package file

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

func isSegment(path string) bool { return strings.HasSuffix(path, segExt) }

// TestAckAfterSync checks the batch policy: when Append returns, the last
// operation on the segment file was an fdatasync that followed the write.
func TestAckAfterSync(t *testing.T) {
	var mu sync.Mutex
	var last []errorfs.OpKind
	fs := vfs.InjectFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op) error {
		if isSegment(op.Path) && (op.Kind == errorfs.OpFileWriteAt || op.Kind == errorfs.OpFileSyncData) {
			mu.Lock()
			last = append(last, op.Kind)
			mu.Unlock()
		}
		return nil
	}))
	e := openEngine(t, fs, "/d", Options{SegmentBytes: 2048})
	defer e.Close()
	s := mustCreate(t, e, "s")
	for i := range 50 {
		mu.Lock()
		last = last[:0]
		mu.Unlock()
		mustAppend(t, s, rec(i, 100))
		mu.Lock()
		ops := append([]errorfs.OpKind(nil), last...)
		mu.Unlock()
		n := len(ops)
		if n < 2 || ops[n-1] != errorfs.OpFileSyncData || ops[n-2] != errorfs.OpFileWriteAt {
			t.Fatalf("append %d acknowledged after %v, want a write then an fdatasync last", i, ops)
		}
	}
}

// TestVisibleOnlyAfterSync: while the fdatasync covering an append is
// blocked, the append is neither acknowledged nor visible to readers.
func TestVisibleOnlyAfterSync(t *testing.T) {
	var block atomic.Bool
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	fs := vfs.InjectFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op) error {
		if block.Load() && isSegment(op.Path) && op.Kind == errorfs.OpFileSyncData {
			entered <- struct{}{}
			<-release
		}
		return nil
	}))
	e := openEngine(t, fs, "/d", Options{})
	defer e.Close()
	s := mustCreate(t, e, "s")
	mustAppend(t, s, rec(0, 10))
	wait := s.Wait(1)
	block.Store(true)
	done := make(chan error, 1)
	go func() {
		_, err := s.Append(bg, []shard.Record{rec(1, 10), rec(2, 10)})
		done <- err
	}()
	<-entered
	if _, high := s.Watermarks(); high != 1 {
		t.Fatalf("high = %d while the covering fdatasync is in progress, want 1", high)
	}
	if recs, err := s.Read(bg, 1, shard.Limits{}); err != nil || len(recs) != 0 {
		t.Fatalf("Read(1) during fdatasync = %d records, %v; want none", len(recs), err)
	}
	select {
	case <-wait:
		t.Fatal("Wait(1) fired before the fdatasync completed")
	case err := <-done:
		t.Fatalf("Append returned (%v) before its fdatasync completed", err)
	default:
	}
	block.Store(false)
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	<-wait
	if _, high := s.Watermarks(); high != 3 {
		t.Fatalf("high = %d, want 3", high)
	}
}

// TestGroupCommit: concurrent appenders share writes and fdatasyncs, offsets
// follow enqueue order, and each appender's records stay in its order.
func TestGroupCommit(t *testing.T) {
	var syncs, writes atomic.Int64
	fs := vfs.InjectFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op) error {
		if !isSegment(op.Path) {
			return nil
		}
		switch op.Kind {
		case errorfs.OpFileSyncData:
			syncs.Add(1)
			time.Sleep(time.Millisecond) // a slow disk lets groups form
		case errorfs.OpFileWriteAt:
			writes.Add(1)
		}
		return nil
	}))
	reg := prometheus.NewRegistry()
	e := openEngine(t, fs, "/d", Options{Registerer: reg})
	defer e.Close()
	s := mustCreate(t, e, "s")
	syncs.Store(0)
	writes.Store(0)
	const writers, per = 32, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				r := shard.Record{Timestamp: 1, Key: []byte{byte(w)}, Value: fmt.Appendf(nil, "%d", i)}
				if _, err := s.Append(bg, []shard.Record{r}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	appends := int64(writers * per)
	if n := syncs.Load(); n > appends/4 {
		t.Errorf("%d fdatasyncs for %d appends: no group commit", n, appends)
	}
	if w, n := writes.Load(), syncs.Load(); w != n {
		t.Errorf("%d writes for %d fdatasyncs, want one write per group", w, n)
	}
	all := readAll(t, s)
	if len(all) != int(appends) {
		t.Fatalf("read %d records, want %d", len(all), appends)
	}
	next := make([]int, writers)
	for _, r := range all {
		w := int(r.Key[0])
		if string(r.Value) != fmt.Sprint(next[w]) {
			t.Fatalf("offset %d: writer %d record %q, want %d", r.Offset, w, r.Value, next[w])
		}
		next[w]++
	}
	if got := testutil.ToFloat64(e.m.appends); got != float64(appends) {
		t.Errorf("appends_total = %v, want %d", got, appends)
	}
	if got := testutil.ToFloat64(e.m.fsyncs); got < float64(syncs.Load()) {
		t.Errorf("fsyncs_total = %v, want >= %d", got, syncs.Load())
	}
}

// TestAppendAllocations: the append path does not allocate per record.
func TestAppendAllocations(t *testing.T) {
	e := openEngine(t, vfs.NewMem(), "/d", Options{Sync: SyncNone, SegmentBytes: 1 << 30})
	defer e.Close()
	s := mustCreate(t, e, "s")
	batch := make([]shard.Record, 100)
	for i := range batch {
		batch[i] = shard.Record{Timestamp: 1, Key: []byte("key"), Value: make([]byte, 100), Headers: []shard.Header{{Key: "h", Value: []byte("v")}}}
	}
	for range 10 { // warm up buffers
		mustAppend(t, s, batch...)
	}
	allocs := testing.AllocsPerRun(50, func() { mustAppend(t, s, batch...) })
	if allocs > 10 {
		t.Fatalf("%v allocations per append of %d records", allocs, len(batch))
	}
}

// TestSyncPolicies: interval and none acknowledge without an fdatasync per
// append; interval syncs on its timer, and Close syncs.
func TestSyncPolicies(t *testing.T) {
	for _, pol := range []SyncPolicy{SyncInterval, SyncNone} {
		t.Run(string(pol), func(t *testing.T) {
			var syncs atomic.Int64
			mem := vfs.NewCrashableMem()
			fs := vfs.InjectFS(mem, vfs.InjectorFunc(func(op vfs.Op) error {
				if isSegment(op.Path) && op.Kind == errorfs.OpFileSyncData {
					syncs.Add(1)
				}
				return nil
			}))
			e := openEngine(t, fs, "/d", Options{Sync: pol, SyncInterval: 10 * time.Millisecond})
			s := mustCreate(t, e, "s")
			base := syncs.Load()
			for i := range 100 {
				mustAppend(t, s, rec(i, 50))
			}
			if n := syncs.Load() - base; n > 20 {
				t.Fatalf("%d fdatasyncs for 100 appends", n)
			}
			if pol == SyncInterval {
				deadline := time.Now().Add(5 * time.Second)
				for {
					if after := mem.CrashClone(vfs.CrashCloneCfg{}); countRecords(t, after) == 100 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("interval policy did not sync within 5s")
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if n := countRecords(t, mem.CrashClone(vfs.CrashCloneCfg{})); n != 100 {
				t.Fatalf("after Close only %d of 100 records are synced", n)
			}
		})
	}
}

// countRecords opens shard "s" on fs and counts its records.
func countRecords(t *testing.T, fs vfs.FS) int {
	e := openEngine(t, fs, "/d", Options{})
	defer e.Close()
	return len(readAll(t, mustOpen(t, e, "s")))
}

// TestAppendCanceled: an append whose context ends before the committer
// takes it is withdrawn and never written; one already taken completes.
func TestAppendCanceled(t *testing.T) {
	var block atomic.Bool
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	fs := vfs.InjectFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op) error {
		if block.Load() && isSegment(op.Path) && op.Kind == errorfs.OpFileSyncData {
			entered <- struct{}{}
			<-release
		}
		return nil
	}))
	e := openEngine(t, fs, "/d", Options{})
	defer e.Close()
	s := mustCreate(t, e, "s")
	block.Store(true)
	first := make(chan error, 1)
	go func() { _, err := s.Append(bg, []shard.Record{rec(0, 10)}); first <- err }()
	<-entered // the committer is syncing record 0
	ctx, cancel := context.WithCancel(bg)
	second := make(chan error, 1)
	go func() { _, err := s.Append(ctx, []shard.Record{rec(1, 10)}); second <- err }()
	for {
		s.qmu.Lock()
		n := len(s.queue)
		s.qmu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-second; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled append = %v", err)
	}
	block.Store(false)
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if off := mustAppend(t, s, rec(2, 10)); off != 1 {
		t.Fatalf("next append at %d, want 1 (the canceled one must not take an offset)", off)
	}
	checkSame(t, readAll(t, s), []shard.Record{withOffset(rec(0, 10), 0), withOffset(rec(2, 10), 1)})
}

// TestWaitOffsets: Wait fires exactly when the high watermark passes its
// offset, and on Seal.
func TestWaitOffsets(t *testing.T) {
	e := openEngine(t, vfs.NewMem(), "/d", Options{})
	defer e.Close()
	s := mustCreate(t, e, "s")
	w0, w2, w5 := s.Wait(0), s.Wait(2), s.Wait(5)
	mustAppend(t, s, rec(0, 1), rec(1, 1))
	select {
	case <-w0:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait(0) did not fire")
	}
	select {
	case <-w2:
		t.Fatal("Wait(2) fired at high 2")
	default:
	}
	mustAppend(t, s, rec(2, 1))
	<-w2
	select {
	case <-w5:
		t.Fatal("Wait(5) fired at high 3")
	default:
	}
	if err := s.Seal(bg); err != nil {
		t.Fatal(err)
	}
	<-w5
	<-s.Wait(100)
}
