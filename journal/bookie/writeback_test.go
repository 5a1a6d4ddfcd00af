package bookie

import (
	"strings"
	"sync"
	"testing"
	"time"

	pvfs "github.com/cockroachdb/pebble/v2/vfs"

	"github.com/quiremq/quire/internal/vfs"
)

// syncToFS records the SyncTo calls made on the entry logs it creates.
type syncToFS struct {
	vfs.FS
	mu    sync.Mutex
	calls map[string][]int64 // entry log name → SyncTo offsets, in order
	syncs int                // Sync calls on entry logs
}

func (fs *syncToFS) Create(name string, c pvfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	if err != nil || !strings.HasSuffix(name, entryLogExt) {
		return f, err
	}
	return &syncToFile{File: f, fs: fs, name: name}, nil
}

type syncToFile struct {
	vfs.File
	fs   *syncToFS
	name string
}

func (f *syncToFile) SyncTo(length int64) (bool, error) {
	f.fs.mu.Lock()
	f.fs.calls[f.name] = append(f.fs.calls[f.name], length)
	f.fs.mu.Unlock()
	return f.File.SyncTo(length)
}

func (f *syncToFile) Sync() error {
	f.fs.mu.Lock()
	f.fs.syncs++
	f.fs.mu.Unlock()
	return f.File.Sync()
}

// TestEntryLogWriteBackAsApplied: the applier starts the write-back of an
// entry log each entryLogWriteBack bytes as it writes it, so that a
// checkpoint's fsync never has more than that left to flush per log (a
// burst of tens of MB there stalled the journal's fdatasyncs behind it).
func TestEntryLogWriteBackAsApplied(t *testing.T) {
	fs := &syncToFS{FS: vfs.NewMem(), calls: map[string][]int64{}}
	o := testOptions(fs, &MemCookieStore{})
	o.EntryLogSize = 64 << 20
	o.JournalFileSize = 16 << 20 // no roll, so no checkpoint kicked by one
	b := mustOpen(t, o)
	defer b.Close()

	// Four waves of ~1 MiB, each applied before the next is added, so
	// that the applier writes the log in several steps.
	const waves, perWave, size = 4, 256, 4 << 10
	const entries = waves * perWave
	payload := make([]byte, size)
	errs := make(chan error, perWave)
	for w := range uint64(waves) {
		for i := range uint64(perWave) {
			e := w*perWave + i
			b.AddEntry(1, e, int64(e)-1, payload, false, func(err error) { errs <- err })
		}
		for range perWave {
			if err := <-errs; err != nil {
				t.Fatalf("add: %v", err)
			}
		}
		// Wait until the wave is applied to the entry log.
		b.mu.Lock()
		for b.inflight > 0 && b.err == nil {
			b.space.Wait()
		}
		b.mu.Unlock()
	}

	b.applyMu.Lock()
	active, started := b.ap.active.size, b.ap.active.started
	name := b.fs.PathJoin(b.logDir, fileName(b.ap.active.id, entryLogExt))
	b.applyMu.Unlock()
	if active < entries*size {
		t.Fatalf("active entry log holds %d bytes, want at least %d", active, entries*size)
	}
	if active-started >= entryLogWriteBack {
		t.Errorf("write-back started up to %d of %d bytes: %d left for the checkpoint, want < %d", started, active, active-started, entryLogWriteBack)
	}
	fs.mu.Lock()
	calls := fs.calls[name]
	fs.mu.Unlock()
	if len(calls) < 3 {
		t.Fatalf("SyncTo calls on %s: %v, want one per %d bytes written (%d bytes)", name, calls, entryLogWriteBack, active)
	}
	prev := int64(0)
	for _, off := range calls {
		if off-prev < entryLogWriteBack {
			t.Errorf("SyncTo offsets %v: step %d below %d", calls, off-prev, entryLogWriteBack)
		}
		prev = off
	}
	if prev != started {
		t.Errorf("last SyncTo offset %d, log records write-back started at %d", prev, started)
	}

	// A checkpoint still syncs the log in full.
	fs.mu.Lock()
	before := fs.syncs
	fs.mu.Unlock()
	if err := b.checkpoint(); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	fs.mu.Lock()
	after := fs.syncs
	fs.mu.Unlock()
	if after <= before {
		t.Errorf("checkpoint synced no entry log (Sync calls %d → %d)", before, after)
	}
}

// TestOpenPreparesNextJournalFile: a new bookie's Open zero-fills the
// first journal file, the next one and openSpareFiles spares kept for
// recycling, without kicking (and waiting up to a second for) a checkpoint
// that has nothing to retire, so that the first rolls find their files
// ready instead of zero-filling under the first adds.
func TestOpenPreparesNextJournalFile(t *testing.T) {
	o := testOptions(vfs.NewMem(), &MemCookieStore{})
	b := mustOpen(t, o)
	defer b.Close()
	j := b.jnl
	if got, want := j.zeroFilled.Load(), int64(2+openSpareFiles); got != want {
		t.Errorf("journal files zero-filled by Open: %d, want %d (the first, the next and the spares)", got, want)
	}
	if len(j.next) != 1 {
		t.Errorf("the next journal file is not prepared when Open returns")
	}
	j.mu.Lock()
	kicked, free := j.ckptKicked, len(j.free)
	j.mu.Unlock()
	if kicked != 0 {
		t.Errorf("Open kicked %d checkpoints for journal files, want 0", kicked)
	}
	if free != openSpareFiles {
		t.Errorf("%d journal files ready for recycling after Open, want %d", free, openSpareFiles)
	}
}

// TestFirstRollsRecycle: with the applier stalled (so that no checkpoint
// can retire a journal file), the first rolls of a new bookie recycle the
// spares Open prepared instead of zero-filling under the adds, and a
// restart replays everything across them.
func TestFirstRollsRecycle(t *testing.T) {
	fs := vfs.NewMem()
	o := testOptions(fs, &MemCookieStore{})
	b := mustOpen(t, o)
	j := b.jnl
	filled := j.zeroFilled.Load()
	b.applyMu.Lock() // stalls the applier and checkpoints
	var e uint64
	for ; j.rolled.Load() < openSpareFiles; e++ {
		if err := addSync(b, 1, e, int64(e)-1, payloadFor(1, e), false); err != nil {
			b.applyMu.Unlock()
			t.Fatal(err)
		}
	}
	// The file after the last roll is being prepared: from the last spare.
	deadline := time.Now().Add(5 * time.Second)
	for j.recycled.Load() < openSpareFiles && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	recycled, zeroFilled := j.recycled.Load(), j.zeroFilled.Load()-filled
	b.applyMu.Unlock()
	if recycled != openSpareFiles || zeroFilled != 0 {
		t.Errorf("first %d rolls: %d files recycled, %d zero-filled; want %d and 0", openSpareFiles, recycled, zeroFilled, openSpareFiles)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = mustOpen(t, o)
	defer b.Close()
	requireEntries(t, b, 1, 0, e, "after restart")
}
