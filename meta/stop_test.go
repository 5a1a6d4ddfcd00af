package meta

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// stopNode stops node i and fails the test if Stop does not return: Stop
// bounds its own wait with a 10s context, so only a goroutine that ignores
// both the context and stopCh could hold it past the watchdog.
func stopNode(t *testing.T, c *testCluster, i int) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.stop(i)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("node %d: Stop did not return within a minute", c.nodes[i].id)
	}
}

// waitState polls node i until its Raft state is st.
func waitState(t *testing.T, c *testCluster, i int, st raft.RaftState) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for c.nodes[i].srv.raft.State() != st {
		if time.Now().After(deadline) {
			t.Fatalf("node %d: not %v within 20s (%v)", c.nodes[i].id, st, c.nodes[i].srv.raft.State())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestStopWhileElecting stops nodes while they take office: a candidate
// that cannot win (its peers are partitioned away), and new leaders the
// moment Raft makes them leader, while their leadership barrier (promote)
// is queued, in flight or being applied — Raft never resolves a future
// still queued when it shuts down, so a wait on one must end with Stop.
func TestStopWhileElecting(t *testing.T) {
	c := newTestCluster(t, 3, inmemTransport, false, nil)
	lead := c.leader()
	f := (lead + 1) % 3
	var others []string
	for i, nd := range c.nodes {
		if i != f {
			others = append(others, nd.addr)
		}
	}
	c.net.Partition([]string{c.nodes[f].addr}, others)
	waitState(t, c, f, raft.Candidate)
	stopNode(t, c, f)
	c.net.Heal()
	c.start(f, nil)

	for round := range 3 {
		old := c.leader()
		stopNode(t, c, old)
		// The first of the others that Raft makes leader is stopped at once.
		deadline := time.Now().Add(20 * time.Second)
		next := -1
		for next < 0 {
			for i, nd := range c.nodes {
				if nd.srv != nil && nd.srv.raft.State() == raft.Leader {
					next = i
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: no new leader within 20s", round)
			}
			time.Sleep(100 * time.Microsecond)
		}
		stopNode(t, c, next)
		c.start(old, nil)
		c.start(next, nil)
	}
	// The cluster still works.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.nodes[c.leader()].srv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
}

// neverFuture is a Raft future that is never resolved (as one queued in
// Raft when it shuts down).
type neverFuture struct{ release chan struct{} }

func (f neverFuture) Error() error {
	<-f.release
	return raft.ErrRaftShutdown
}

// TestFutureErrStop checks that a wait on a Raft future ends when the
// server stops, even if Raft never resolves the future.
func TestFutureErrStop(t *testing.T) {
	c := newTestCluster(t, 1, inmemTransport, false, nil)
	s := c.nodes[0].srv
	f := neverFuture{release: make(chan struct{})}
	defer close(f.release)
	errc := make(chan error, 1)
	go func() { errc <- s.futureErr(f) }()
	stopNode(t, c, 0)
	select {
	case err := <-errc:
		if !errors.Is(err, ErrStopped) {
			t.Fatalf("futureErr after Stop: %v, want ErrStopped", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("futureErr did not return after Stop")
	}
}
