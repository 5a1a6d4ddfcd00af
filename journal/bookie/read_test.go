package bookie

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quiremq/quire/internal/vfs"
)

// rangeRead collects what ReadRange passes to fn.
func rangeRead(b *Bookie, ledger, first, last, stride uint64) ([]uint64, [][]byte, error) {
	var es []uint64
	var ps [][]byte
	err := b.ReadRange(ledger, first, last, stride, func(e uint64, p []byte) error {
		es = append(es, e)
		ps = append(ps, p)
		return nil
	})
	return es, ps, err
}

// checkRange compares ReadRange with the naive model, ReadEntry of each
// entry of the range in turn: the same entries and bytes, stopping with a
// MissingEntryError at the first entry ReadEntry says is absent.
func checkRange(t *testing.T, b *Bookie, ledger, first, last, stride uint64) {
	t.Helper()
	es, ps, err := rangeRead(b, ledger, first, last, stride)
	checkRecords(t, b, ledger, first, last, stride, es, ps, err)
	step := max(stride, 1)
	i := 0
	for e := first; e <= last; e += step {
		want, werr := b.ReadEntry(ledger, e, false)
		if errors.Is(werr, ErrNoSuchLedger) {
			if len(es) != 0 || !errors.Is(err, ErrNoSuchLedger) {
				t.Fatalf("range %d [%d,%d]/%d of an unknown ledger: %d entries, %v", ledger, first, last, stride, len(es), err)
			}
			return
		}
		if errors.Is(werr, ErrNoSuchEntry) {
			var me *MissingEntryError
			if len(es) != i || !errors.As(err, &me) || me.Entry != e || me.Ledger != ledger || !errors.Is(err, ErrNoSuchEntry) {
				t.Fatalf("range %d [%d,%d]/%d: %d entries then %v; want %d entries then entry %d missing", ledger, first, last, stride, len(es), err, i, e)
			}
			return
		}
		if werr != nil {
			t.Fatal(werr)
		}
		if i >= len(es) || es[i] != e || !bytes.Equal(ps[i], want) {
			t.Fatalf("range %d [%d,%d]/%d: item %d is not entry %d as ReadEntry reads it (err %v)", ledger, first, last, stride, i, e, err)
		}
		i++
		if last-e < step {
			break
		}
	}
	if err != nil || len(es) != i {
		t.Fatalf("range %d [%d,%d]/%d: %d entries, %v; want %d, nil", ledger, first, last, stride, len(es), err, i)
	}
}

// checkRecords checks that ReadRangeRecords reads what ReadRange read —
// es, ps, then err — as whole records whose checksums hold.
func checkRecords(t *testing.T, b *Bookie, ledger, first, last, stride uint64, es []uint64, ps [][]byte, err error) {
	t.Helper()
	i := 0
	rerr := b.ReadRangeRecords(ledger, first, last, stride, func(e uint64, rec []byte) error {
		l, re, p, n, ok := DecodeRecord(rec)
		if !ok || n != len(rec) || l != ledger || re != e || i >= len(es) || es[i] != e || !bytes.Equal(p, ps[i]) {
			return fmt.Errorf("record %d (entry %d, %d bytes) is not item %d of ReadRange (decoded %v: ledger %d entry %d)", i, e, len(rec), i, ok, l, re)
		}
		i++
		return nil
	})
	var me, rme *MissingEntryError
	switch {
	case i != len(es):
		t.Fatalf("range %d [%d,%d]/%d: %d records, %d entries by ReadRange (%v)", ledger, first, last, stride, i, len(es), rerr)
	case err == nil && rerr == nil:
	case errors.As(err, &me) && errors.As(rerr, &rme) && *me == *rme:
	case errors.Is(err, ErrNoSuchLedger) && errors.Is(rerr, ErrNoSuchLedger):
	default:
		t.Fatalf("range %d [%d,%d]/%d: records end with %v, ReadRange with %v", ledger, first, last, stride, rerr, err)
	}
}

// TestReadRangeModel checks ReadRange against ReadEntry over random
// workloads: ledgers interleaved in small entry logs, holes, entries
// replaced, a deleted ledger whose logs are compacted (entries move),
// checkpoints, restarts, and random ranges and strides — including ranges
// read while the entries are still pending (synced, not yet applied).
func TestReadRangeModel(t *testing.T) {
	for seed := range uint64(2) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			mem := vfs.NewCrashableMem()
			cookies := &MemCookieStore{}
			o := testOptions(mem, cookies)
			o.CompactionThreshold = 0.9
			b := mustOpen(t, o)
			defer func() { b.Close() }()
			next := map[uint64]uint64{}
			query := func() {
				l := uint64(rng.IntN(6))
				first := uint64(rng.IntN(int(next[l]) + 3))
				last := first + uint64(rng.IntN(300))
				if rng.IntN(10) == 0 {
					last = math.MaxUint64
				}
				checkRange(t, b, l, first, last, uint64(rng.IntN(5)))
			}
			for round := range 6 {
				var wg sync.WaitGroup
				for range 400 {
					l := uint64(1 + rng.IntN(4))
					e := next[l]
					next[l]++
					if rng.IntN(30) == 0 {
						continue // a hole
					}
					if rng.IntN(40) == 0 && e > 0 {
						e = uint64(rng.IntN(int(e))) // replace an earlier entry
					}
					wg.Add(1)
					b.AddEntry(l, e, -1, payloadFor(l, e), false, func(err error) {
						if err != nil {
							t.Error(err)
						}
						wg.Done()
					})
				}
				wg.Wait()
				query() // some of the batch is likely still pending
				for range 25 {
					query()
				}
				switch round {
				case 2:
					if err := b.DeleteLedger(3); err != nil {
						t.Fatal(err)
					}
					if err := checkpointApplied(b); err != nil {
						t.Fatal(err)
					}
					if err := b.reclaim(); err != nil {
						t.Fatal(err)
					}
				case 4:
					if err := b.Close(); err != nil {
						t.Fatal(err)
					}
					b = mustOpen(t, o)
				}
			}
			for l := range uint64(6) {
				checkRange(t, b, l, 0, math.MaxUint64, 1)
				checkRange(t, b, l, 1, next[l], 3)
			}
		})
	}
}

// TestReadRangeLive reads ranges while adds are acknowledged: every entry
// acknowledged before a ReadRange starts is returned by it (whether still
// pending or already applied when it is reached), in order, with its
// bytes, and the read stops, explicitly, at the first entry not yet
// acknowledged.
func TestReadRangeLive(t *testing.T) {
	b := mustOpen(t, testOptions(vfs.NewMem(), &MemCookieStore{}))
	defer b.Close()
	const n = 800
	var acked atomic.Int64 // entries 0..acked-1 are acknowledged
	acked.Store(-1)
	done := make(chan error, 1)
	go func() {
		for e := range uint64(n) {
			if err := addSync(b, 7, e, -1, payloadFor(7, e), false); err != nil {
				done <- err
				return
			}
			acked.Store(int64(e))
		}
		done <- nil
	}()
	for reads := 0; ; reads++ {
		before := acked.Load()
		es, ps, err := rangeRead(b, 7, 0, math.MaxUint64, 1)
		if before >= 0 || len(es) > 0 {
			if int64(len(es)) <= before {
				t.Fatalf("read %d entries, but %d were acknowledged before the read (%v)", len(es), before+1, err)
			}
			var me *MissingEntryError
			if !errors.As(err, &me) || me.Entry != uint64(len(es)) {
				t.Fatalf("read %d entries, then %v", len(es), err)
			}
			for i, e := range es {
				if e != uint64(i) || !bytes.Equal(ps[i], payloadFor(7, e)) {
					t.Fatalf("item %d: entry %d, bytes ok %v", i, e, bytes.Equal(ps[i], payloadFor(7, e)))
				}
			}
		}
		if len(es) == n {
			break
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestReadRangeErrors(t *testing.T) {
	b := mustOpen(t, testOptions(vfs.NewMem(), &MemCookieStore{}))
	for e := range uint64(10) {
		if err := addSync(b, 1, e, -1, payloadFor(1, e), false); err != nil {
			t.Fatal(err)
		}
	}
	called := false
	fn := func(uint64, []byte) error { called = true; return nil }
	if err := b.ReadRange(2, 0, 10, 1, fn); !errors.Is(err, ErrNoSuchLedger) || called {
		t.Errorf("unknown ledger: %v (fn called: %v)", err, called)
	}
	if err := b.ReadRange(1, 5, 4, 1, fn); err != nil || called {
		t.Errorf("empty range: %v (fn called: %v)", err, called)
	}
	stop := errors.New("enough")
	var got []uint64
	err := b.ReadRange(1, 0, 9, 2, func(e uint64, _ []byte) error {
		got = append(got, e)
		if len(got) == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || fmt.Sprint(got) != "[0 2 4]" {
		t.Errorf("fn's error: %v after %v", err, got)
	}
	if es, _, err := rangeRead(b, 1, 9, math.MaxUint64, math.MaxUint64); err != nil || fmt.Sprint(es) != "[9]" {
		t.Errorf("a stride past the end of the key space: %v, %v", es, err)
	}
	b.Close()
	if err := b.ReadRange(1, 0, 9, 1, fn); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

// A record corrupted on disk: ReadRange fails with ErrCorrupt before
// passing it; ReadRangeRecords, which leaves checksums to the receiver,
// passes it as stored, and DecodeRecord rejects it.
func TestReadRangeCorruptRecord(t *testing.T) {
	mem := vfs.NewMem()
	b := mustOpen(t, testOptions(mem, &MemCookieStore{}))
	defer b.Close()
	for e := range uint64(10) {
		if err := addSync(b, 1, e, -1, payloadFor(1, e), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := checkpointApplied(b); err != nil {
		t.Fatal(err)
	}
	loc, ok, err := b.lookup(1, 4)
	if err != nil || !ok {
		t.Fatalf("entry 4 not indexed: %v", err)
	}
	f, err := mem.OpenReadWrite(mem.PathJoin(b.logDir, fileName(loc.log, entryLogExt)), vfs.CategoryShard)
	if err != nil {
		t.Fatal(err)
	}
	bad := []byte{payloadFor(1, 4)[2] ^ 0xff}
	if _, err := f.WriteAt(bad, loc.offset+logHeaderSize+2); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	es, _, err := rangeRead(b, 1, 0, 9, 1)
	if len(es) != 0 || !errors.Is(err, ErrCorrupt) {
		t.Errorf("ReadRange: %v then %v, want ErrCorrupt first", es, err)
	}
	var good []uint64
	var corrupt []uint64
	err = b.ReadRangeRecords(1, 0, 9, 1, func(e uint64, rec []byte) error {
		if _, re, p, _, ok := DecodeRecord(rec); ok && re == e && bytes.Equal(p, payloadFor(1, e)) {
			good = append(good, e)
		} else if !ok {
			corrupt = append(corrupt, e)
		}
		return nil
	})
	if err != nil || len(good) != 9 || len(corrupt) != 1 || corrupt[0] != 4 {
		t.Errorf("ReadRangeRecords: %v; %d good records, corrupt ones %v; want 9 good, entry 4 corrupt", err, len(good), corrupt)
	}
}
