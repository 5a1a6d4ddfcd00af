package s3_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quiremq/quire/engines/objstore"
	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/engines/s3"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// newMeta starts a single-voter meta in process on an in-memory FS.
func newMeta(t testing.TB) meta.KV {
	t.Helper()
	net := meta.NewFaultNetwork()
	addr := "127.0.0.1:1"
	s, err := meta.Open(meta.Options{
		ID: 1, Voters: []meta.Voter{{ID: 1, Addr: addr}}, Dir: "/m", FS: vfs.NewMem(),
		Snapshots: raft.NewInmemSnapshotStore(), Transport: net.Transport(addr),
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond, LeaseCheckInterval: 10 * time.Millisecond,
		MinLeaseTTL: 10 * time.Millisecond,
		Logger:      quiet, RaftLogLevel: "error",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := s.WaitLeader(wctx); err != nil {
		t.Fatal(err)
	}
	return s
}

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
