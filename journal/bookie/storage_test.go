package bookie

import (
	"bytes"
	"errors"
	"testing"

	"github.com/quiremq/quire/internal/vfs"
)

// TestRecycledJournalLeftovers deletes a ledger, then writes until the
// journal files that held its adds are recycled, crashes and reopens: the
// recycled files' old records (which carry an older file number) must not
// be replayed, or the deleted ledger would come back.
func TestRecycledJournalLeftovers(t *testing.T) {
	mem := vfs.NewCrashableMem()
	cookies := &MemCookieStore{}
	o := testOptions(mem, cookies)
	b := mustOpen(t, o)
	for e := uint64(0); e < 100; e++ {
		if err := addSync(b, 1, e, -1, payloadFor(1, e), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.DeleteLedger(1); err != nil {
		t.Fatal(err)
	}
	for e := uint64(0); e < 400; e++ {
		if err := addSync(b, 2, e, -1, payloadFor(2, e), false); err != nil {
			t.Fatal(err)
		}
		if e%50 == 0 {
			if err := checkpointApplied(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	if b.jnl.recycled.Load() == 0 {
		t.Fatal("no journal file was recycled")
	}
	clone := mem.CrashClone(vfs.CrashCloneCfg{})
	b.Close()
	b = mustOpen(t, testOptions(clone, cookies))
	defer b.Close()
	if _, err := b.ReadEntry(1, 0, false); !errors.Is(err, ErrNoSuchLedger) {
		t.Fatalf("deleted ledger after recycling: %v", err)
	}
	for e := uint64(0); e < 400; e++ {
		if got, err := b.ReadEntry(2, e, false); err != nil || !bytes.Equal(got, payloadFor(2, e)) {
			t.Fatalf("entry 2/%d: %v", e, err)
		}
	}
	nums, _ := listNumbered(clone, o.JournalDir, journalExt)
	if len(nums) > 2+o.JournalRecycleFiles+o.CheckpointJournalFiles+1 {
		t.Fatalf("%d journal files kept: checkpoints do not retire them", len(nums))
	}
}

// TestCompaction deletes most ledgers interleaved in the same entry logs:
// the sparse logs are compacted (live entries moved, old files deleted),
// logs with nothing live are deleted whole, and the survivors read back
// before and after a crash.
func TestCompaction(t *testing.T) {
	mem := vfs.NewCrashableMem()
	cookies := &MemCookieStore{}
	o := testOptions(mem, cookies)
	o.CompactionThreshold = 0.5
	// No recycling: the journal would kick background checkpoints (and
	// reclaims) when it runs out of files to recycle, racing with the
	// explicit ones below.
	o.JournalRecycleFiles = -1
	b := mustOpen(t, o)
	for e := uint64(0); e < 100; e++ {
		for l := uint64(1); l <= 4; l++ {
			if err := addSync(b, l, e, -1, payloadFor(l, e), false); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Ledger 5 alone fills whole logs: deleted whole.
	for e := uint64(0); e < 100; e++ {
		if err := addSync(b, 5, e, -1, payloadFor(5, e), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := addSync(b, 6, 0, -1, payloadFor(6, 0), false); err != nil {
		t.Fatal(err)
	}
	before, _ := listNumbered(mem, b.logDir, entryLogExt)
	for _, l := range []uint64{1, 2, 3, 5} {
		if err := b.DeleteLedger(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := checkpointApplied(b); err != nil {
		t.Fatal(err)
	}
	if err := b.reclaim(); err != nil {
		t.Fatal(err)
	}
	after, _ := listNumbered(mem, b.logDir, entryLogExt)
	if testutilCounter(b.m.compactions) == 0 || testutilCounter(b.m.deletedLogs) == 0 {
		t.Fatalf("compactions %v, deleted logs %v", testutilCounter(b.m.compactions), testutilCounter(b.m.deletedLogs))
	}
	var size int64
	for _, id := range after {
		st, _ := mem.Stat(mem.PathJoin(b.logDir, fileName(id, entryLogExt)))
		size += st.Size()
	}
	var live int64
	for e := uint64(0); e < 100; e++ {
		live += int64(logHeaderSize + len(payloadFor(4, e)))
	}
	if size > 2*live+int64(o.EntryLogSize) {
		t.Fatalf("entry logs hold %d bytes for %d live (files %v → %v)", size, live, before, after)
	}
	check := func(b *Bookie) {
		t.Helper()
		for e := uint64(0); e < 100; e++ {
			if got, err := b.ReadEntry(4, e, false); err != nil || !bytes.Equal(got, payloadFor(4, e)) {
				t.Fatalf("entry 4/%d: %v", e, err)
			}
			if _, err := b.ReadEntry(1, e, false); !errors.Is(err, ErrNoSuchEntry) {
				t.Fatalf("deleted entry 1/%d: %v", e, err)
			}
		}
		if got, err := b.ReadEntry(6, 0, false); err != nil || !bytes.Equal(got, payloadFor(6, 0)) {
			t.Fatalf("entry 6/0: %v", err)
		}
	}
	check(b)
	clone := mem.CrashClone(vfs.CrashCloneCfg{})
	b.Close()
	b = mustOpen(t, testOptions(clone, cookies))
	defer b.Close()
	check(b)
}
