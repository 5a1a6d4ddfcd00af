package file

import (
	"io"
	"log/slog"
	"testing"

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

func memFS(*testing.T) (vfs.FS, string) { return vfs.NewMem(), "/data" }

func diskFS(t *testing.T) (vfs.FS, string) { return vfs.Default, t.TempDir() }
