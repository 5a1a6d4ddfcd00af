package bookie

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	dto "github.com/prometheus/client_model/go"

	"github.com/quiremq/quire/internal/vfs"
)

// TestJournalSyncFailure fails a journal fdatasync under load: every add in
// flight fails with an error wrapping ErrFailed and the cause, none is
// acknowledged, the bookie refuses further writes, reads keep working, and
// after a crash everything acknowledged before the failure is there (the
// PostgreSQL "fsyncgate" lesson: never acknowledge what could not be synced).
func TestJournalSyncFailure(t *testing.T) {
	for _, opName := range []string{"sync", "write"} {
		t.Run(opName, func(t *testing.T) {
			mem := vfs.NewCrashableMem()
			var armed atomic.Bool
			fs := vfs.InjectFS(mem, vfs.InjectorFunc(func(op vfs.Op) error {
				if !armed.Load() || !strings.HasSuffix(op.Path, journalExt) {
					return nil
				}
				if (opName == "sync" && (op.Kind == vfs.OpFileSyncData || op.Kind == vfs.OpFileSync)) ||
					(opName == "write" && op.Kind == errorfs.OpFileWriteAt) {
					return vfs.ErrInjected
				}
				return nil
			}))
			cookies := &MemCookieStore{}
			b := mustOpen(t, testOptions(fs, cookies))
			for e := uint64(0); e < 50; e++ {
				if err := addSync(b, 1, e, int64(e)-1, payloadFor(1, e), false); err != nil {
					t.Fatal(err)
				}
			}
			armed.Store(true)
			var wg sync.WaitGroup
			var acked, failed atomic.Int64
			for e := uint64(50); e < 250; e++ {
				wg.Add(1)
				b.AddEntry(1, e, -1, payloadFor(1, e), false, func(err error) {
					defer wg.Done()
					switch {
					case err == nil:
						acked.Add(1)
					case errors.Is(err, ErrFailed) && errors.Is(err, vfs.ErrInjected):
						failed.Add(1)
					default:
						t.Errorf("add: unexpected error %v", err)
					}
				})
			}
			wg.Wait()
			if acked.Load() != 0 || failed.Load() != 200 {
				t.Fatalf("after the injected failure: %d acked, %d failed; want 0 and 200", acked.Load(), failed.Load())
			}
			if err := addSync(b, 1, 300, -1, []byte("x"), false); !errors.Is(err, ErrFailed) {
				t.Fatalf("add after failure: %v", err)
			}
			if _, err := b.Fence(1); !errors.Is(err, ErrFailed) {
				t.Fatalf("fence after failure: %v", err)
			}
			if err := b.WriteLAC(1, 10); !errors.Is(err, ErrFailed) {
				t.Fatalf("LAC after failure: %v", err)
			}
			requireEntries(t, b, 1, 0, 50, "after failure") // reads keep working
			if testutilGauge(b) != 1 {
				t.Fatal("quire_bookie_failed not set")
			}
			clone := mem.CrashClone(vfs.CrashCloneCfg{})
			b.Close()
			b = mustOpen(t, testOptions(clone, cookies))
			defer b.Close()
			requireEntries(t, b, 1, 0, 50, "after restart")
			if err := addSync(b, 1, 300, -1, []byte("x"), false); err != nil {
				t.Fatalf("add after restart: %v", err)
			}
		})
	}
}

// TestDiskFullOnPrepare fails creating the next journal file: the adds
// that needed it fail and the bookie stops accepting writes.
func TestDiskFullOnPrepare(t *testing.T) {
	mem := vfs.NewMem()
	var armed atomic.Bool
	fs := vfs.InjectFS(mem, vfs.InjectorFunc(func(op vfs.Op) error {
		if armed.Load() && strings.HasSuffix(op.Path, journalExt) && op.Kind == vfs.OpCreate {
			return errors.New("no space left on device")
		}
		return nil
	}))
	o := testOptions(fs, &MemCookieStore{})
	o.JournalRecycleFiles = -1
	b := mustOpen(t, o)
	armed.Store(true)
	defer b.Close()
	var err error
	for e := uint64(0); e < 1000 && err == nil; e++ {
		err = addSync(b, 1, e, -1, payloadFor(1, e), false)
	}
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("adds past the journal file: %v", err)
	}
	if err := addSync(b, 2, 0, -1, []byte("x"), false); !errors.Is(err, ErrFailed) {
		t.Fatalf("add after failure: %v", err)
	}
}

func testutilGauge(b *Bookie) float64 {
	var m dto.Metric
	if err := b.m.failed.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}
