package file

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// failingFS fails segment operations of one kind once armed: the nth such
// operation after arming, and (sticky) every later one until disarmed.
type failingFS struct {
	kind  errorfs.OpKind
	err   error
	armed atomic.Bool
	n     atomic.Int64 // operations left before failing
	hit   atomic.Bool
}

func (f *failingFS) MaybeError(op vfs.Op) error {
	if !f.armed.Load() || op.Kind != f.kind || !isSegment(op.Path) {
		return nil
	}
	if f.hit.Load() || f.n.Add(-1) < 0 {
		f.hit.Store(true)
		return f.err
	}
	return nil
}

func (f *failingFS) String() string { return "failingFS" }

func (f *failingFS) arm(n int64) { f.hit.Store(false); f.n.Store(n); f.armed.Store(true) }
func (f *failingFS) disarm()     { f.armed.Store(false) }

// TestFailedFsync fails the Nth fdatasync: that append gets an error
// wrapping shard.ErrFailed and the I/O error; the shard refuses writes (even
// once the disk is healthy) until reopened; acknowledged data stays readable;
// reopening recovers and accepts writes again.
func TestFailedFsync(t *testing.T) {
	for _, n := range []int64{0, 3} {
		inj := &failingFS{kind: errorfs.OpFileSyncData, err: vfs.ErrInjected}
		mem := vfs.NewMem()
		e := openEngine(t, vfs.InjectFS(mem, inj), "/d", Options{})
		s := mustCreate(t, e, "s")
		var want []shard.Record
		for i := range 5 {
			want = append(want, withOffset(rec(i, 100), mustAppend(t, s, rec(i, 100))))
		}
		inj.arm(n)
		var err error
		i := 5
		for ; err == nil; i++ {
			var first uint64
			first, err = s.Append(bg, []shard.Record{rec(i, 100)})
			if err == nil {
				want = append(want, withOffset(rec(i, 100), first))
			}
		}
		if !errors.Is(err, shard.ErrFailed) || !errors.Is(err, vfs.ErrInjected) {
			t.Fatalf("append with a failed fdatasync = %v, want ErrFailed wrapping the I/O error", err)
		}
		if got := int64(len(want)) - 5; got != n {
			t.Fatalf("%d appends succeeded after arming, want %d", got, n)
		}
		inj.disarm()
		if _, err := s.Append(bg, []shard.Record{rec(99, 10)}); !errors.Is(err, shard.ErrFailed) {
			t.Fatalf("append after a failed fdatasync = %v, want ErrFailed", err)
		}
		if err := s.Seal(bg); !errors.Is(err, shard.ErrFailed) {
			t.Fatalf("Seal after a failed fdatasync = %v, want ErrFailed", err)
		}
		if _, high := s.Watermarks(); high != uint64(len(want)) {
			t.Fatalf("high = %d after the failed append, want %d", high, len(want))
		}
		checkSame(t, readAll(t, s), want)
		if got := testutil.ToFloat64(e.m.failedShards); got != 1 {
			t.Fatalf("failed_shards_total = %v", got)
		}
		// Engine.Open reopens (and recovers) a failed shard.
		s2 := mustOpen(t, e, "s")
		if s2 == s {
			t.Fatal("Open returned the failed shard instead of reopening it")
		}
		if _, err := s.Append(bg, []shard.Record{rec(99, 10)}); !errors.Is(err, shard.ErrClosed) {
			t.Fatalf("append on the replaced failed shard = %v, want ErrClosed", err)
		}
		got := readAll(t, s2)
		// The failed append was written; it may be recovered, like after a crash.
		if len(got) != len(want) && len(got) != len(want)+1 {
			t.Fatalf("after reopen %d records, want %d or %d", len(got), len(want), len(want)+1)
		}
		checkSame(t, got[:len(want)], want)
		next := mustAppend(t, s2, rec(100, 10))
		if next != uint64(len(got)) {
			t.Fatalf("append after reopen at %d, want %d", next, len(got))
		}
		e.Close()
	}
}

// TestDiskFull fails segment writes with ENOSPC: the append gets the error,
// its records never become visible, the shard refuses writes, reads work,
// and after a restart on a healthy disk everything acknowledged is there.
func TestDiskFull(t *testing.T) {
	inj := &failingFS{kind: errorfs.OpFileWriteAt, err: syscall.ENOSPC}
	mem := vfs.NewMem()
	e := openEngine(t, vfs.InjectFS(mem, inj), "/d", Options{})
	s := mustCreate(t, e, "s")
	var want []shard.Record
	for i := range 10 {
		want = append(want, withOffset(rec(i, 100), mustAppend(t, s, rec(i, 100))))
	}
	inj.arm(0)
	// Concurrent appenders: every one of them fails, none is visible.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[w] = s.Append(bg, []shard.Record{rec(100+w, 100)})
		}()
	}
	wg.Wait()
	for w, err := range errs {
		if !errors.Is(err, shard.ErrFailed) {
			t.Fatalf("appender %d: %v, want ErrFailed", w, err)
		}
	}
	if !errors.Is(errs[0], syscall.ENOSPC) && !errors.Is(errs[1], syscall.ENOSPC) {
		t.Fatalf("no append reports ENOSPC: %v", errs)
	}
	if _, high := s.Watermarks(); high != 10 {
		t.Fatalf("high = %d, want 10", high)
	}
	checkSame(t, readAll(t, s), want)
	if err := e.Close(); err != nil {
		t.Fatalf("Close after a failed write: %v", err)
	}
	inj.disarm()
	e = openEngine(t, vfs.InjectFS(mem, inj), "/d", Options{})
	defer e.Close()
	s = mustOpen(t, e, "s")
	checkSame(t, readAll(t, s), want)
	if off := mustAppend(t, s, rec(20, 10)); off != 10 {
		t.Fatalf("append after restart at %d, want 10", off)
	}
}

// TestRollFailure: if the next segment cannot be created, the append fails
// and the shard is failed, and a reopen recovers.
func TestRollFailure(t *testing.T) {
	var fail atomic.Bool
	mem := vfs.NewMem()
	fs := vfs.InjectFS(mem, vfs.InjectorFunc(func(op vfs.Op) error {
		if fail.Load() && op.Kind == errorfs.OpCreate && isSegment(op.Path) {
			return syscall.ENOSPC
		}
		return nil
	}))
	e := openEngine(t, fs, "/d", Options{SegmentBytes: 1024})
	defer e.Close()
	s := mustCreate(t, e, "s")
	var want []shard.Record
	for i := range 5 {
		want = append(want, withOffset(rec(i, 300), mustAppend(t, s, rec(i, 300))))
	}
	fail.Store(true)
	var err error
	for i := 5; err == nil; i++ {
		var off uint64
		if off, err = s.Append(bg, []shard.Record{rec(i, 300)}); err == nil {
			want = append(want, withOffset(rec(i, 300), off))
		}
	}
	if !errors.Is(err, shard.ErrFailed) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append needing a roll on a full disk = %v", err)
	}
	fail.Store(false)
	s = mustOpen(t, e, "s")
	checkSame(t, readAll(t, s), want)
	mustAppend(t, s, rec(50, 300))
}

// TestSyncFailureInterval: with the interval policy a failed background
// fdatasync also fails the shard.
func TestSyncFailureInterval(t *testing.T) {
	inj := &failingFS{kind: errorfs.OpFileSyncData, err: vfs.ErrInjected}
	e := openEngine(t, vfs.InjectFS(vfs.NewMem(), inj), "/d", Options{Sync: SyncInterval, SyncInterval: 1e6})
	defer e.Close()
	s := mustCreate(t, e, "s")
	inj.arm(0)
	mustAppend(t, s, rec(0, 10))
	for i := 0; ; i++ {
		_, err := s.Append(bg, []shard.Record{rec(1, 10)})
		if errors.Is(err, shard.ErrFailed) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 100000 {
			t.Fatal("background fdatasync failure never failed the shard")
		}
	}
	if s.failed() == nil {
		t.Fatal("shard not failed")
	}
}
