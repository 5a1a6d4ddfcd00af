package meta

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
)

// testTimeouts are short Raft timeouts for in-process clusters; generous
// enough for the race detector on two cores.
func testOptions() Options {
	return Options{
		HeartbeatTimeout:   raceSlowdown * 150 * time.Millisecond,
		ElectionTimeout:    raceSlowdown * 150 * time.Millisecond,
		LeaderLeaseTimeout: raceSlowdown * 150 * time.Millisecond,
		CommitTimeout:      2 * time.Millisecond,
		SnapshotInterval:   time.Hour, // tests snapshot explicitly
		SnapshotThreshold:  1 << 30,
		TrailingLogs:       64,
		WatchHistory:       512,
		LeaseCheckInterval: 20 * time.Millisecond,
		MinLeaseTTL:        50 * time.Millisecond,
		ApplyTimeout:       5 * time.Second,
		Logger:             slog.New(slog.NewTextHandler(io.Discard, nil)),
		RaftLogLevel:       "error",
	}
}

type transportKind int

const (
	inmemTransport transportKind = iota // FaultNetwork, partitionable
	grpcTransport                       // the production transport over loopback gRPC
)

// testCluster is n meta nodes in this process, each with its own gRPC
// server on loopback. Storage is an in-memory FS (kept across restarts) or a
// directory on disk.
type testCluster struct {
	t      testing.TB
	kind   transportKind
	net    *FaultNetwork
	voters []Voter
	nodes  []*testNode
	onDisk bool
	tweak  func(*Options)
}

type testNode struct {
	id    uint64
	addr  string
	fs    vfs.FS
	dir   string
	snaps raft.SnapshotStore
	srv   *Server
	gs    *grpc.Server
}

func newTestCluster(t testing.TB, n int, kind transportKind, onDisk bool, tweak func(*Options)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, kind: kind, net: NewFaultNetwork(), onDisk: onDisk, tweak: tweak}
	lns := make([]net.Listener, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
		c.voters = append(c.voters, Voter{ID: uint64(i + 1), Addr: ln.Addr().String()})
	}
	for i := range n {
		nd := &testNode{id: uint64(i + 1), addr: c.voters[i].Addr}
		if onDisk {
			nd.fs, nd.dir = vfs.Default, t.TempDir()
		} else {
			nd.fs, nd.dir = vfs.NewMem(), "/meta"
			nd.snaps = raft.NewInmemSnapshotStore()
		}
		c.nodes = append(c.nodes, nd)
		c.start(i, lns[i])
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.stop(i)
		}
	})
	return c
}

func (c *testCluster) start(i int, ln net.Listener) {
	c.t.Helper()
	nd := c.nodes[i]
	if ln == nil {
		var err error
		for try := 0; ; try++ {
			if ln, err = net.Listen("tcp", nd.addr); err == nil || try == 50 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			c.t.Fatal(err)
		}
	}
	o := testOptions()
	o.ID, o.Voters, o.FS, o.Dir, o.Snapshots = nd.id, c.voters, nd.fs, nd.dir, nd.snaps
	if c.kind == inmemTransport {
		o.Transport = c.net.Transport(nd.addr)
	}
	o.DialOptions = c.net.DialOptions(nd.addr)
	if c.tweak != nil {
		c.tweak(&o)
	}
	srv, err := Open(o)
	if err != nil {
		c.t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	go gs.Serve(ln)
	if err := srv.Start(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	nd.srv, nd.gs = srv, gs
}

// stop stops node i (its data stays).
func (c *testCluster) stop(i int) {
	nd := c.nodes[i]
	if nd.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nd.srv.Stop(ctx); err != nil {
		c.t.Errorf("stopping node %d: %v", nd.id, err)
	}
	nd.gs.Stop()
	nd.srv, nd.gs = nil, nil
}

// kill cuts node i off abruptly: its gRPC server closes every connection
// first (streams break with requests in flight), then the node stops.
func (c *testCluster) kill(i int) {
	nd := c.nodes[i]
	if nd.srv == nil {
		return
	}
	nd.gs.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := nd.srv.Stop(ctx); err != nil {
		c.t.Errorf("stopping node %d: %v", nd.id, err)
	}
	nd.srv, nd.gs = nil, nil
}

// leader waits for a ready leader that every running node agrees on and
// returns its index.
func (c *testCluster) leader() int {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		lead := -1
		agree := true
		for i, nd := range c.nodes {
			if nd.srv == nil {
				continue
			}
			if nd.srv.IsLeader() {
				lead = i
			}
		}
		if lead >= 0 {
			for _, nd := range c.nodes {
				if nd.srv != nil {
					if id, _ := nd.srv.Leader(); id != c.nodes[lead].id {
						agree = false
					}
				}
			}
			if agree {
				return lead
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.t.Fatal("no leader within 10s")
	return -1
}

// follower returns the index of a running node that is not the leader.
func (c *testCluster) follower() int {
	l := c.leader()
	for i, nd := range c.nodes {
		if i != l && nd.srv != nil {
			return i
		}
	}
	c.t.Fatal("no follower")
	return -1
}

// client returns a Client of the given nodes (all when none are given).
func (c *testCluster) client(idx ...int) *Client {
	c.t.Helper()
	var addrs []string
	if len(idx) == 0 {
		for _, nd := range c.nodes {
			addrs = append(addrs, nd.addr)
		}
	}
	for _, i := range idx {
		addrs = append(addrs, c.nodes[i].addr)
	}
	cl, err := NewClient(ClientOptions{Addrs: addrs})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// converge waits until every running node has applied the same revision
// and returns it.
func (c *testCluster) converge() uint64 {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var revs []uint64
		for _, nd := range c.nodes {
			if nd.srv != nil {
				revs = append(revs, nd.srv.Revision())
			}
		}
		same := true
		for _, r := range revs {
			same = same && r == revs[0]
		}
		if same {
			// Let in-flight entries land, then check again.
			time.Sleep(50 * time.Millisecond)
			ok := true
			for _, nd := range c.nodes {
				if nd.srv != nil {
					ok = ok && nd.srv.Revision() == revs[0]
				}
			}
			if ok {
				return revs[0]
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatal("nodes did not converge within 10s")
	return 0
}
