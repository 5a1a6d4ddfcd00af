package file

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

// quietLogger discards the engine's logs in tests.
var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   func(t *testing.T) (vfs.FS, string)
		opts Options
	}{
		{"mem/batch", memFS, Options{}},
		{"disk/batch", diskFS, Options{}},
		{"mem/interval", memFS, Options{Sync: SyncInterval, SyncInterval: 5e6}},
		{"disk/none", diskFS, Options{Sync: SyncNone}},
		// Small segments and index interval: every read crosses segments
		// and index entries; the conformance suite's 200 shards also run
		// with a reader cache far smaller than the number of segments.
		{"mem/tiny-segments", memFS, Options{SegmentBytes: 4096, IndexIntervalBytes: 256, MaxOpenSegments: 8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shardtest.Run(t, shardtest.Config{
				New: func(t *testing.T) shardtest.Opener {
					fs, dir := tc.fs(t)
					return func() (shard.Engine, error) {
						o := tc.opts
						o.FS, o.Dir, o.Logger = fs, dir, quietLogger
						return Open(o)
					}
				},
				Durable: true,
			})
		})
	}
}

// TestConformanceOffload runs the suite with every sealed segment offloaded
// at once (tiny segments, zero delete lag, a pass every millisecond), so
// that reads really go to the object store.
func TestConformanceOffload(t *testing.T) {
	var gets, puts atomic.Int64
	runOffloadConformance(t, func(*testing.T) objstore.Store {
		return &countingStore{Store: objstore.NewMem(), gets: &gets, puts: &puts}
	})
	// The suite really went through the store.
	if puts.Load() == 0 || gets.Load() == 0 {
		t.Fatalf("the suite made %d Puts and %d Gets: nothing was offloaded or read back", puts.Load(), gets.Load())
	}
}

// TestConformanceOffloadMinIO runs the suite offloading to a real MinIO.
func TestConformanceOffloadMinIO(t *testing.T) {
	srv := s3test.StartMinIO(t)
	st, err := s3store.Open(t.Context(), srv.Options("file-offload"))
	if err != nil {
		t.Fatal(err)
	}
	var gets, puts atomic.Int64
	runOffloadConformance(t, func(*testing.T) objstore.Store { return &countingStore{Store: st, gets: &gets, puts: &puts} })
	if puts.Load() == 0 || gets.Load() == 0 {
		t.Fatalf("the suite made %d Puts and %d Gets: nothing was offloaded or read back", puts.Load(), gets.Load())
	}
}

// countingStore counts Puts and Gets.
type countingStore struct {
	objstore.Store
	gets, puts *atomic.Int64
}

func (c *countingStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	c.puts.Add(1)
	return c.Store.Put(ctx, key, r, size)
}

// Get counts the reads that are not offload's verification (which reads
// whole objects from byte 0 with an explicit length): reads of offloaded
// segments start after the segment header, indexes are fetched whole (n < 0).
func (c *countingStore) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	if off > 0 || n < 0 {
		c.gets.Add(1)
	}
	return c.Store.Get(ctx, key, off, n)
}

// runOffloadConformance runs the shard conformance suite on an engine that
// offloads to the store newStore returns (one per engine directory).
func runOffloadConformance(t *testing.T, newStore func(t *testing.T) objstore.Store) {
	var engines atomic.Int64
	shardtest.Run(t, shardtest.Config{
		New: func(t *testing.T) shardtest.Opener {
			fs, dir := memFS(t)
			st := newStore(t)
			prefix := fmt.Sprintf("conformance-%d", engines.Add(1)) // engines may share a bucket
			return func() (shard.Engine, error) {
				return Open(Options{
					FS: fs, Dir: dir, Logger: quietLogger,
					SegmentBytes: 4096, IndexIntervalBytes: 256, MaxOpenSegments: 8,
					Offload: &OffloadOptions{Store: st, Prefix: prefix, Interval: time.Millisecond, RetryMin: time.Millisecond, RetryMax: 10 * time.Millisecond, BlockBytes: 4096, CacheBytes: 64 << 10},
				})
			}
		},
		Durable: true,
	})
}

func memFS(*testing.T) (vfs.FS, string) { return vfs.NewMem(), "/data" }

func diskFS(t *testing.T) (vfs.FS, string) { return vfs.Default, t.TempDir() }
