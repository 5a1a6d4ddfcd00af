// Package enginetest holds test helpers shared by the engines built on
// engines/s3 (s3, hdfs): an in-process meta store to index their objects.
package enginetest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
)

// Quiet is a logger that drops everything.
var Quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// NewMeta starts a single-voter meta in process on an in-memory file system
// and in-memory Raft transport, stopped by the test's cleanup.
func NewMeta(t testing.TB) meta.KV {
	t.Helper()
	net := meta.NewFaultNetwork()
	addr := "127.0.0.1:1"
	s, err := meta.Open(meta.Options{
		ID: 1, Voters: []meta.Voter{{ID: 1, Addr: addr}}, Dir: "/m", FS: vfs.NewMem(),
		Snapshots: raft.NewInmemSnapshotStore(), Transport: net.Transport(addr),
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond, LeaseCheckInterval: 10 * time.Millisecond,
		MinLeaseTTL: 10 * time.Millisecond, Logger: Quiet, RaftLogLevel: "error",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}
