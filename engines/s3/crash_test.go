package s3_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/s3"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// TestCrashDirStore runs appends on the directory store over a crashable
// in-memory file system, "crashes" it (unsynced writes dropped) while
// appends are in flight, and checks that every acknowledged record is
// readable after reopening: an object is durable before its index entry is
// committed, and the index decides what exists.
func TestCrashDirStore(t *testing.T) {
	ctx := context.Background()
	for seed := range uint64(3) {
		fs := vfs.NewCrashableMem()
		kv := newMeta(t)
		st, err := objstore.OpenDir(objstore.DirOptions{FS: fs, Dir: "/objects", Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		e, err := s3.Open(ctx, s3.Options{Store: st, Meta: kv, FlushInterval: -1, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		s, err := e.Create(ctx, "crash")
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		acked := map[uint64]string{}
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for w := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					key := string(rune('a'+w)) + string(rune('0'+i%10))
					first, err := s.Append(ctx, []shard.Record{{Timestamp: 1, Key: []byte(key), Value: []byte(key)}})
					if err != nil {
						return
					}
					mu.Lock()
					acked[first] = key
					mu.Unlock()
				}
			})
		}
		rng := rand.New(rand.NewPCG(seed, seed))
		for {
			mu.Lock()
			n := len(acked)
			mu.Unlock()
			if n >= 20+rng.IntN(40) {
				break
			}
			<-s.(shard.Tailer).Wait(uint64(n))
		}
		mu.Lock()
		// Seed 0 drops every unsynced write, the others a random share.
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: int(seed) * rng.IntN(50), RNG: rng})
		want := make(map[uint64]string, len(acked))
		for k, v := range acked {
			want[k] = v
		}
		mu.Unlock()
		close(stop)
		wg.Wait()
		e.Close()

		st2, err := objstore.OpenDir(objstore.DirOptions{FS: crashed, Dir: "/objects", Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		e2, err := s3.Open(ctx, s3.Options{Store: st2, Meta: kv, FlushInterval: -1, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		s2, err := e2.Open(ctx, "crash")
		if err != nil {
			t.Fatal(err)
		}
		for off, key := range want {
			got, err := s2.Read(ctx, off, shard.Limits{MaxRecords: 1})
			if err != nil || len(got) != 1 || string(got[0].Key) != key {
				t.Fatalf("seed %d: acknowledged offset %d (%q) after the crash: %v, %v", seed, off, key, got, err)
			}
		}
		e2.Close()
	}
}
