package s3_test

import (
	"testing"
	"time"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/engines/s3"
	"github.com/quiremq/quire/shard/shardtest"
)

func TestConformanceMem(t *testing.T) {
	shardtest.Run(t, shardtest.Config{
		New:     func(t *testing.T) shardtest.Opener { return opener(objstore.NewMem(), newMeta(t), nil) },
		Durable: true,
	})
}

// TestConformanceBatched waits for appends to share objects (the default
// policy), with small objects so that reads cross many of them.
func TestConformanceBatched(t *testing.T) {
	shardtest.Run(t, shardtest.Config{
		New: func(t *testing.T) shardtest.Opener {
			return opener(objstore.NewMem(), newMeta(t), func(o *s3.Options) {
				o.FlushInterval, o.FlushBytes = 2*time.Millisecond, 4096
			})
		},
		Durable: true,
	})
}

func TestConformanceDir(t *testing.T) {
	shardtest.Run(t, shardtest.Config{
		New: func(t *testing.T) shardtest.Opener {
			st, err := objstore.OpenDir(objstore.DirOptions{Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			return opener(st, newMeta(t), nil)
		},
		Durable: true,
	})
}

func TestConformanceMinIO(t *testing.T) {
	srv := s3test.StartMinIO(t)
	shardtest.Run(t, shardtest.Config{
		New:     func(t *testing.T) shardtest.Opener { return opener(serverStore(t, srv), newMeta(t), nil) },
		Durable: true,
	})
}

func TestConformanceVersityGW(t *testing.T) {
	srv := s3test.StartVersityGW(t)
	shardtest.Run(t, shardtest.Config{
		New:     func(t *testing.T) shardtest.Opener { return opener(serverStore(t, srv), newMeta(t), nil) },
		Durable: true,
	})
}
