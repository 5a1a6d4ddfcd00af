package bookie

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quiremq/quire/internal/vfs"
)

// rangeRecords returns the range records of ledger in the index: the
// first entry and the entries of each, checking the invariants (entries
// strictly increase within and across records, the key is the first).
func rangeRecords(t *testing.T, b *Bookie, ledger uint64) (firsts []uint64, entries []uint64) {
	t.Helper()
	lo, hi := ledgerIndexBounds(ledger)
	it, err := b.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		v, err := decodeRange(it.Value())
		if err != nil {
			t.Fatal(err)
		}
		first := beUint64(it.Key()[9:])
		if v.elem(0).entry != first {
			t.Fatalf("ledger %d: record keyed %d starts at %d", ledger, first, v.elem(0).entry)
		}
		firsts = append(firsts, first)
		for i := range v.len() {
			e := v.elem(i).entry
			if n := len(entries); n > 0 && entries[n-1] >= e {
				t.Fatalf("ledger %d: entry %d after %d (records overlap or are unsorted)", ledger, e, entries[n-1])
			}
			entries = append(entries, e)
		}
	}
	return firsts, entries
}

// addBatchSync adds entries [first, end) step stride of ledger with one
// AddEntries call and waits for all; payload gives each payload.
func addBatchSync(t *testing.T, b *Bookie, ledger, first, end, stride uint64, recovery bool, payload func(e uint64) []byte) {
	t.Helper()
	var adds []AddReq
	for e := first; e < end; e += stride {
		adds = append(adds, AddReq{Ledger: ledger, Entry: e, LAC: -1, Payload: payload(e), Recovery: recovery})
	}
	r := newBatchResults(len(adds))
	b.AddEntries(adds, r.done)
	r.wg.Wait()
	for i, err := range r.errs {
		if err != nil {
			t.Fatalf("add %d/%d: %v", ledger, adds[i].Entry, err)
		}
	}
}

// TestIndexRanges: sequential adds take one index key per run of
// entries, not one per entry; rewritten entries (recovery adds), a
// striped ledger whose gaps are filled later and entries rewritten out of
// order are merged into records that never overlap; every entry reads
// back its latest payload (ReadEntry, ReadRange), also after compaction
// moved them and after a restart.
func TestIndexRanges(t *testing.T) {
	mem := vfs.NewCrashableMem()
	cookies := &MemCookieStore{}
	o := testOptions(mem, cookies)
	o.EntryLogSize = 1 << 20
	b := mustOpen(t, o)
	rewritten := func(e uint64) []byte { return append([]byte("rewritten "), payloadFor(9, e)...) }
	want := map[uint64]map[uint64][]byte{1: {}, 2: {}, 3: {}}
	orig := func(l uint64) func(e uint64) []byte {
		return func(e uint64) []byte {
			want[l][e] = payloadFor(l, e)
			return payloadFor(l, e)
		}
	}
	for e := uint64(0); e < 1000; e += 100 {
		addBatchSync(t, b, 1, e, e+100, 1, false, orig(1))
	}
	if err := checkpointApplied(b); err != nil {
		t.Fatal(err)
	}
	// Records split at rangeMaxEntries, at entry-log rolls and between
	// applies (each batch of 100 may be one, on a slow machine): far fewer
	// than one per entry either way.
	if firsts, entries := rangeRecords(t, b, 1); len(entries) != 1000 || len(firsts) > 50 {
		t.Fatalf("ledger 1: %d entries in %d index records; want 1000 in at most 50", len(entries), len(firsts))
	}
	// Recovery rewrites a run inside a record, one across two records
	// and the last entry.
	rw := func(e uint64) []byte {
		want[1][e] = rewritten(e)
		return rewritten(e)
	}
	addBatchSync(t, b, 1, 100, 110, 1, true, rw)
	addBatchSync(t, b, 1, 250, 262, 1, true, rw)
	addBatchSync(t, b, 1, 999, 1000, 1, true, rw)
	// Ledger 2 striped (every third entry), then the gaps filled, in two
	// orders; ledger 3 written backwards.
	addBatchSync(t, b, 2, 0, 600, 3, false, orig(2))
	if err := checkpointApplied(b); err != nil {
		t.Fatal(err)
	}
	addBatchSync(t, b, 2, 1, 600, 3, false, orig(2))
	addBatchSync(t, b, 2, 2, 300, 3, false, orig(2))
	for e := uint64(20); e > 0; e-- {
		addBatchSync(t, b, 3, e-1, e, 1, false, orig(3))
	}
	// Ledger 4's entries at the top of the id space (above 2^63), one
	// rewritten by a later apply.
	want[4] = map[uint64][]byte{}
	for _, e := range []uint64{1<<63 - 1, 1 << 63, 1<<63 + 1, ^uint64(0) - 1, ^uint64(0)} {
		if err := addSync(b, 4, e, -1, orig(4)(e), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := checkpointApplied(b); err != nil {
		t.Fatal(err)
	}
	want[4][1<<63] = []byte("rewritten 1<<63")
	if err := addSync(b, 4, 1<<63, -1, want[4][1<<63], true); err != nil {
		t.Fatal(err)
	}
	check := func(b *Bookie, when string) {
		t.Helper()
		if err := checkpointApplied(b); err != nil {
			t.Fatal(err)
		}
		for l, entries := range want {
			_, indexed := rangeRecords(t, b, l)
			if len(indexed) != len(entries) {
				t.Fatalf("%s: ledger %d: %d entries indexed, want %d", when, l, len(indexed), len(entries))
			}
			for e, p := range entries {
				if got, err := b.ReadEntry(l, e, false); err != nil || !bytes.Equal(got, p) {
					t.Fatalf("%s: read %d/%d: %v (%q)", when, l, e, err, got[:min(len(got), 20)])
				}
			}
		}
		if _, err := b.ReadEntry(2, 302, false); !errors.Is(err, ErrNoSuchEntry) {
			t.Fatalf("%s: entry 2/302 never written: %v", when, err)
		}
		var got int
		err := b.ReadRange(2, 0, 299, 1, func(e uint64, p []byte) error {
			if !bytes.Equal(p, want[2][e]) {
				t.Fatalf("%s: ReadRange 2/%d: wrong payload", when, e)
			}
			got++
			return nil
		})
		if err != nil || got != 300 {
			t.Fatalf("%s: ReadRange 2 [0, 299]: %d entries, %v", when, got, err)
		}
		err = b.ReadRange(2, 300, 599, 1, func(uint64, []byte) error { return nil })
		var missing *MissingEntryError
		if !errors.As(err, &missing) || missing.Entry != 302 {
			t.Fatalf("%s: ReadRange 2 [300, 599]: %v, want entry 302 missing", when, err)
		}
	}
	check(b, "live")
	// Compact every synced log (all but the active one): the records of
	// all three ledgers in them move to the copies.
	b.maintMu.Lock()
	b.applyMu.Lock()
	var ids []uint64
	for id := range b.ap.usage {
		if id != b.ap.active.id {
			ids = append(ids, id)
		}
	}
	b.applyMu.Unlock()
	b.maintMu.Unlock()
	for _, id := range ids {
		if err := b.compact(id); err != nil {
			t.Fatalf("compacting log %d: %v", id, err)
		}
	}
	if len(ids) == 0 || testutilCounter(b.m.compactions) == 0 {
		t.Fatalf("no compaction ran (%d sealed logs)", len(ids))
	}
	check(b, "after compaction")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = mustOpen(t, o)
	defer b.Close()
	check(b, "after restart")
}

// TestIndexMigratesEntryKeys: an index written with one key per entry
// (before range records) is converted at Open; every entry reads back.
func TestIndexMigratesEntryKeys(t *testing.T) {
	mem := vfs.NewMem()
	o := testOptions(mem, &MemCookieStore{})
	b := mustOpen(t, o)
	for l := uint64(1); l <= 3; l++ {
		addBatchSync(t, b, l, 0, 300, 1, false, func(e uint64) []byte { return payloadFor(l, e) })
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// Rewrite the index as the old format would have it.
	db, err := pebble.Open(mem.PathJoin(o.Dir, indexDir), indexOptions(mem, t.Logf))
	if err != nil {
		t.Fatal(err)
	}
	batch := db.NewBatch()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRange}, UpperBound: []byte{prefixRange + 1}})
	if err != nil {
		t.Fatal(err)
	}
	var old int
	for it.First(); it.Valid(); it.Next() {
		v, err := decodeRange(it.Value())
		if err != nil {
			t.Fatal(err)
		}
		for i := range v.len() {
			e := v.elem(i)
			k := append([]byte{prefixEntry}, it.Key()[1:9]...)
			k = binary.BigEndian.AppendUint64(k, e.entry)
			val := binary.LittleEndian.AppendUint64(nil, v.log())
			val = binary.LittleEndian.AppendUint64(val, uint64(e.offset))
			val = binary.LittleEndian.AppendUint32(val, e.length)
			_ = batch.Set(k, val, nil)
			old++
		}
	}
	it.Close()
	_ = batch.DeleteRange([]byte{prefixRange}, []byte{prefixRange + 1}, nil)
	if err := batch.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if old != 900 {
		t.Fatalf("%d per-entry keys written, want 900", old)
	}
	b = mustOpen(t, o)
	defer b.Close()
	for l := uint64(1); l <= 3; l++ {
		requireEntries(t, b, l, 0, 300, "after the migration")
		if firsts, entries := rangeRecords(t, b, l); len(entries) != 300 || len(firsts) > 300/8 { // split only where the log changes (48 KiB logs)
			t.Fatalf("ledger %d: %d entries in %d records after the migration", l, len(entries), len(firsts))
		}
	}
	it, err = b.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixEntry}, UpperBound: []byte{prefixEntry + 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	if it.First() {
		t.Fatal("per-entry keys left after the migration")
	}
}
