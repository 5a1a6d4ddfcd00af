package s3_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/engines/s3"
	"github.com/quiremq/quire/engines/s3/enginetest"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

var (
	quiet   = enginetest.Quiet
	newMeta = enginetest.NewMeta
)

// opener returns a shardtest.Opener over one store and one meta.
func opener(st objstore.Store, kv meta.KV, tweak func(*s3.Options)) shardtest.Opener {
	return func() (shard.Engine, error) {
		opts := s3.Options{Store: st, Meta: kv, FlushInterval: -1, Logger: quiet}
		if tweak != nil {
			tweak(&opts)
		}
		return s3.Open(context.Background(), opts)
	}
}

var buckets atomic.Int64

// serverStore opens a new bucket on a test S3 server.
func serverStore(t testing.TB, srv *s3test.Server) objstore.Store {
	t.Helper()
	st, err := s3store.Open(context.Background(), srv.Options(fmt.Sprintf("engine-%d", buckets.Add(1))))
	if err != nil {
		t.Fatal(err)
	}
	return st
}
