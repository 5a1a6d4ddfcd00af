// Package metatest starts meta servers for other packages' tests: a
// single-voter cluster in process on an in-memory file system, with
// timeouts short enough for tests, and optionally its meta.v1 gRPC
// service on loopback for clients in other processes.
package metatest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
)

// Start starts a single-voter meta in process (in-memory FS, in-memory
// snapshots, a fault-network transport), waits until it leads, and stops
// it when the test ends.
func Start(t testing.TB) *meta.Server {
	t.Helper()
	fnet := meta.NewFaultNetwork()
	addr := "127.0.0.1:1"
	s, err := meta.Open(meta.Options{
		ID: 1, Voters: []meta.Voter{{ID: 1, Addr: addr}}, Dir: "/m", FS: vfs.NewMem(),
		Snapshots: raft.NewInmemSnapshotStore(), Transport: fnet.Transport(addr),
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond, LeaseCheckInterval: 10 * time.Millisecond,
		MinLeaseTTL: 10 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)), RaftLogLevel: "error",
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

// Serve serves s's meta.v1 gRPC service on 127.0.0.1 until the test
// ends and returns its address (for meta.NewClient).
func Serve(t testing.TB, s *meta.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	s.Register(gs)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}
