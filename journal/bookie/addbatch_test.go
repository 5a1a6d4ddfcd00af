package bookie

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quiremq/quire/internal/vfs"
)

// batchResults collects the answers of AddEntries batches: each index
// must be answered exactly once.
type batchResults struct {
	mu    sync.Mutex
	calls []int
	errs  []error
	acked []int // indexes acknowledged (err == nil), in answer order
	wg    sync.WaitGroup
}

func newBatchResults(n int) *batchResults {
	r := &batchResults{calls: make([]int, n), errs: make([]error, n)}
	r.wg.Add(n)
	return r
}

func (r *batchResults) done(i int, err error) {
	r.mu.Lock()
	r.calls[i]++
	r.errs[i] = err
	if err == nil {
		r.acked = append(r.acked, i)
	}
	r.mu.Unlock()
	r.wg.Done()
}

// TestAddEntries adds batches mixing ledgers, an oversized add and adds
// to a fenced ledger: every add is answered exactly once with its own
// outcome, acknowledged adds are answered in batch order and read back
// (also after a restart), refused ones are not stored, and the caller may
// reuse the batch slice once AddEntries returns.
func TestAddEntries(t *testing.T) {
	fs := vfs.NewMem()
	cookies := &MemCookieStore{}
	o := testOptions(fs, cookies)
	b := mustOpen(t, o)
	if _, err := b.Fence(3); err != nil {
		t.Fatal(err)
	}
	type want struct {
		ledger, entry uint64
		err           error
	}
	var adds []AddReq
	var wants []want
	for e := uint64(0); e < 300; e++ {
		l := 1 + e/50%2 // runs of 50 adds of ledgers 1 and 2
		adds = append(adds, AddReq{Ledger: l, Entry: e, LAC: int64(e) - 1, Payload: payloadFor(l, e)})
		wants = append(wants, want{l, e, nil})
		switch e {
		case 7:
			adds[len(adds)-1].Payload = make([]byte, o.MaxEntrySize+1)
			wants[len(wants)-1].err = ErrEntryTooLarge
		case 100, 200:
			adds = append(adds, AddReq{Ledger: 3, Entry: e, LAC: -1, Payload: payloadFor(3, e)})
			wants = append(wants, want{3, e, ErrLedgerFenced})
			adds = append(adds, AddReq{Ledger: 3, Entry: e + 1, LAC: int64(e), Payload: payloadFor(3, e+1), Recovery: true})
			wants = append(wants, want{3, e + 1, nil})
		}
	}
	r := newBatchResults(len(adds))
	// Two batches, the second while the first is in flight.
	half := len(adds) / 2
	b.AddEntries(adds[:half], r.done)
	second := adds[half:]
	b.AddEntries(second, func(i int, err error) { r.done(half+i, err) })
	for i := range adds { // the bookie copied the requests
		adds[i].Ledger, adds[i].Entry = 99, 0
	}
	r.wg.Wait()
	for i, w := range wants {
		if r.calls[i] != 1 {
			t.Fatalf("add %d answered %d times", i, r.calls[i])
		}
		if (w.err == nil) != (r.errs[i] == nil) || (w.err != nil && !errors.Is(r.errs[i], w.err)) {
			t.Fatalf("add %d (%d/%d): %v, want %v", i, w.ledger, w.entry, r.errs[i], w.err)
		}
	}
	for k := 1; k < len(r.acked); k++ {
		if r.acked[k] < r.acked[k-1] {
			t.Fatalf("acknowledged out of order: %d after %d", r.acked[k], r.acked[k-1])
		}
	}
	check := func(b *Bookie) {
		t.Helper()
		for _, w := range wants {
			got, err := b.ReadEntry(w.ledger, w.entry, false)
			if w.err == nil && (err != nil || !bytes.Equal(got, payloadFor(w.ledger, w.entry))) {
				t.Fatalf("read %d/%d: %v", w.ledger, w.entry, err)
			}
			if w.err != nil && !errors.Is(err, ErrNoSuchEntry) {
				t.Fatalf("read of refused add %d/%d: %v", w.ledger, w.entry, err)
			}
		}
		if _, err := b.ReadEntry(99, 0, false); !errors.Is(err, ErrNoSuchLedger) {
			t.Fatalf("ledger 99 (written into the batch slice after AddEntries): %v", err)
		}
		for l, want := range map[uint64]int64{1: 248, 2: 298, 3: 200} {
			if lac, err := b.ReadLAC(l, false); err != nil || lac != want {
				t.Fatalf("ledger %d lac %d (%v), want %d", l, lac, err, want)
			}
		}
	}
	check(b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = mustOpen(t, o)
	check(b)
	// After Close every add is refused with ErrClosed before AddEntries
	// returns.
	b.Close()
	r = newBatchResults(3)
	b.AddEntries([]AddReq{{Ledger: 1, Entry: 500}, {Ledger: 1, Entry: 501}, {Ledger: 5, Entry: 0}}, r.done)
	for i, err := range r.errs {
		if r.calls[i] != 1 || !errors.Is(err, ErrClosed) {
			t.Fatalf("add %d after Close: %d answers, %v", i, r.calls[i], err)
		}
	}
}

// TestAddEntriesSyncFailure fails the journal fdatasync under a batch:
// no add of it is acknowledged, each fails once with ErrFailed and the
// cause, and the adds acknowledged before are there after a crash.
func TestAddEntriesSyncFailure(t *testing.T) {
	mem := vfs.NewCrashableMem()
	var armed atomic.Bool
	fs := vfs.InjectFS(mem, vfs.InjectorFunc(func(op vfs.Op) error {
		if armed.Load() && strings.HasSuffix(op.Path, journalExt) && (op.Kind == vfs.OpFileSyncData || op.Kind == vfs.OpFileSync) {
			return vfs.ErrInjected
		}
		return nil
	}))
	cookies := &MemCookieStore{}
	b := mustOpen(t, testOptions(fs, cookies))
	batch := func(first, n uint64) []AddReq {
		var adds []AddReq
		for e := first; e < first+n; e++ {
			adds = append(adds, AddReq{Ledger: 1, Entry: e, LAC: int64(e) - 1, Payload: payloadFor(1, e)})
		}
		return adds
	}
	r := newBatchResults(100)
	b.AddEntries(batch(0, 100), r.done)
	r.wg.Wait()
	if len(r.acked) != 100 {
		t.Fatalf("%d of 100 acknowledged before the failure", len(r.acked))
	}
	armed.Store(true)
	r = newBatchResults(200)
	b.AddEntries(batch(100, 200), r.done)
	r.wg.Wait()
	for i, err := range r.errs {
		if r.calls[i] != 1 || !errors.Is(err, ErrFailed) || !errors.Is(err, vfs.ErrInjected) {
			t.Fatalf("add %d under a failed sync: %d answers, %v", i, r.calls[i], err)
		}
	}
	clone := mem.CrashClone(vfs.CrashCloneCfg{})
	b.Close()
	b = mustOpen(t, testOptions(clone, cookies))
	defer b.Close()
	requireEntries(t, b, 1, 0, 100, "after restart")
}

// TestAddEntriesAllocs checks that a batch costs no allocation per add on
// the caller's side: AddEntries copies the requests into the journal
// queue and shares done.
func TestAddEntriesAllocs(t *testing.T) {
	b := mustOpen(t, testOptions(vfs.NewMem(), &MemCookieStore{}))
	defer b.Close()
	adds := make([]AddReq, 256)
	payload := make([]byte, 100)
	var wg sync.WaitGroup
	done := func(int, error) { wg.Done() }
	next := uint64(0)
	allocs := testing.AllocsPerRun(20, func() {
		wg.Add(len(adds))
		for i := range adds {
			adds[i] = AddReq{Ledger: 1, Entry: next, LAC: -1, Payload: payload}
			next++
		}
		b.AddEntries(adds, done)
		wg.Wait()
	})
	t.Logf("%.1f allocations per batch", allocs)
	// The whole process's allocations while the batch is journaled,
	// synced and applied (groups, index batches): far below one per add.
	if allocs > float64(len(adds))/3 {
		t.Fatalf("%.0f allocations per batch of %d adds", allocs, len(adds))
	}
}
