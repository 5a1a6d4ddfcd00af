// Package manifesttest is the conformance suite of file.Manifest (where the
// file engine records its offloaded segments): every implementation runs
// Run.
package manifesttest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/quiremq/quire/engines/file"
)

func seg(base uint64, key string) *file.RemoteSegment {
	return &file.RemoteSegment{Base: base, End: base + 10, Size: 100 + int64(base), MaxTs: int64(base), CRC: uint32(base) * 7,
		Key: key, IndexKey: key + "i", OffloadedAt: 1_700_000_000_000}
}

// Run checks the Manifest contract on fresh manifests made by newManifest.
func Run(t *testing.T, newManifest func(t *testing.T) file.Manifest) {
	ctx := context.Background()
	load := func(t *testing.T, m file.Manifest, shard string) []file.RemoteSegment {
		t.Helper()
		segs, err := m.Load(ctx, shard)
		if err != nil {
			t.Fatalf("Load(%q): %v", shard, err)
		}
		return segs
	}
	conflict := func(t *testing.T, err error, what string) {
		t.Helper()
		if !errors.Is(err, file.ErrManifestConflict) {
			t.Fatalf("%s: %v, want ErrManifestConflict", what, err)
		}
	}
	t.Run("EmptyAndOrder", func(t *testing.T) {
		m := newManifest(t)
		if segs := load(t, m, "orders/0"); len(segs) != 0 {
			t.Fatalf("new manifest holds %v", segs)
		}
		for _, b := range []uint64{100, 9, 10, 0} {
			if err := m.CAS(ctx, "orders/0", b, nil, seg(b, fmt.Sprint("k", b))); err != nil {
				t.Fatalf("CAS insert %d: %v", b, err)
			}
		}
		segs := load(t, m, "orders/0")
		if len(segs) != 4 {
			t.Fatalf("Load: %d records, want 4", len(segs))
		}
		for i, b := range []uint64{0, 9, 10, 100} {
			if segs[i] != *seg(b, fmt.Sprint("k", b)) {
				t.Fatalf("record %d: %+v, want %+v", i, segs[i], *seg(b, fmt.Sprint("k", b)))
			}
		}
	})
	t.Run("ShardsAreSeparate", func(t *testing.T) {
		m := newManifest(t)
		names := []string{"a", "ab", "a/b", "A", "x y/%"}
		for i, n := range names {
			if err := m.CAS(ctx, n, uint64(i), nil, seg(uint64(i), n)); err != nil {
				t.Fatalf("CAS %q: %v", n, err)
			}
		}
		for i, n := range names {
			segs := load(t, m, n)
			if len(segs) != 1 || segs[0] != *seg(uint64(i), n) {
				t.Fatalf("Load(%q) = %+v, want only its own record", n, segs)
			}
		}
	})
	t.Run("CompareAndSwap", func(t *testing.T) {
		m := newManifest(t)
		a, b := seg(5, "a"), seg(5, "b")
		conflict(t, m.CAS(ctx, "s", 5, a, b), "update of a missing record")
		if err := m.CAS(ctx, "s", 5, nil, a); err != nil {
			t.Fatal(err)
		}
		conflict(t, m.CAS(ctx, "s", 5, nil, b), "insert over an existing record")
		conflict(t, m.CAS(ctx, "s", 5, b, b), "update with the wrong old record")
		conflict(t, m.CAS(ctx, "s", 5, b, nil), "delete with the wrong old record")
		if segs := load(t, m, "s"); len(segs) != 1 || segs[0] != *a {
			t.Fatalf("failed CASes changed the record: %+v", segs)
		}
		if err := m.CAS(ctx, "s", 5, a, b); err != nil {
			t.Fatal(err)
		}
		if segs := load(t, m, "s"); len(segs) != 1 || segs[0] != *b {
			t.Fatalf("after update: %+v", segs)
		}
		if err := m.CAS(ctx, "s", 5, b, nil); err != nil {
			t.Fatal(err)
		}
		if segs := load(t, m, "s"); len(segs) != 0 {
			t.Fatalf("after delete: %+v", segs)
		}
		if err := m.CAS(ctx, "s", 5, nil, nil); err != nil {
			t.Fatalf("delete of a missing record expecting none: %v", err)
		}
		if err := m.CAS(ctx, "s", 6, nil, a); err == nil {
			t.Fatal("a record stored under another base was accepted")
		}
	})
	t.Run("ConcurrentInsertsOneWins", func(t *testing.T) {
		m := newManifest(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		won := 0
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := m.CAS(ctx, "s", 1, nil, seg(1, fmt.Sprint("w", i)))
				if err == nil {
					mu.Lock()
					won++
					mu.Unlock()
				} else if !errors.Is(err, file.ErrManifestConflict) {
					t.Errorf("CAS: %v", err)
				}
			}()
		}
		wg.Wait()
		if won != 1 {
			t.Fatalf("%d concurrent inserts of one record succeeded, want 1", won)
		}
	})
}
