package meta

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
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

// metaGoroutines returns the stacks of the goroutines running code of this
// package (test code aside), by goroutine id.
func metaGoroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	gs := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "quire/meta.") && !strings.Contains(g, "quire/meta.Test") && !strings.Contains(g, "_test.go") {
			id, _, _ := strings.Cut(g, " [")
			gs[id] = g
		}
	}
	return gs
}

// TestStopLeavesNoGoroutines runs every kind of request on a cluster —
// writes (batched, forwarded), linearizable and stale reads, watches,
// leases — then stops it: no goroutine of the package may be left running.
func TestStopLeavesNoGoroutines(t *testing.T) {
	before := metaGoroutines() // left by earlier tests
	c := newTestCluster(t, 3, grpcTransport, false, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lead, fol := c.nodes[c.leader()].srv, c.nodes[c.follower()].srv
	cl := c.client()
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch := lead.Watch(wctx, "k/", 0)
	fwatch := fol.Watch(ctx, "k/", 0) // ends with the node
	id, err := lead.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for i, kv := range []KV{lead, fol, cl} {
		if _, err := kv.Put(ctx, fmt.Sprintf("k/%d", i), []byte("v"), WithLease(id)); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Get(ctx, fmt.Sprintf("k/%d", i)); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Get(ctx, "k/0", Stale()); err != nil && !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		if _, err := kv.KeepAlive(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Delete(ctx, fmt.Sprintf("k/%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for r := range watch {
		if r.Err != nil {
			t.Fatalf("watch: %v", r.Err)
		}
		if len(r.Events) > 0 {
			break
		}
	}
	wcancel()
	for range watch {
	}
	if _, err := fol.Grant(ctx, time.Minute); err != nil { // forwarded
		t.Fatal(err)
	}
	if _, err := fol.List(ctx, "k/", ListOptions{}); err != nil { // forwarded
		t.Fatal(err)
	}
	cwatch := cl.Watch(ctx, "k/", 1) // the gRPC Watch
	for r := range cwatch {
		if r.Err != nil {
			t.Fatalf("client watch: %v", r.Err)
		}
		if len(r.Events) > 0 {
			break
		}
	}
	cl.Close()
	// The gRPC servers keep running (a node stops meta before its gRPC
	// server): Stop itself must end the package's goroutines.
	for _, nd := range c.nodes {
		sctx, scancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := nd.srv.Stop(sctx); err != nil {
			t.Fatalf("node %d: %v", nd.id, err)
		}
		scancel()
	}
	for range fwatch {
	}
	cancel() // ends the client's watch
	// The leader's requests to Raft after Stop (a read barrier, a
	// proposal, a command, a snapshot) must not reach it: Raft might take
	// them into a queue it never serves again, and their waits would never
	// end. Each fails with ErrStopped, as not proposed.
	ls := lead
	for range 32 {
		if err := ls.linearize(); !errors.Is(err, ErrStopped) {
			t.Fatalf("linearize after Stop: %v", err)
		}
		if _, err := ls.apply(context.Background(), &metav1.Command{Op: &metav1.Command_LeaseGrant{LeaseGrant: &metav1.LeaseGrantOp{TtlMs: 1000}}}); !errors.Is(err, ErrStopped) || errors.Is(err, ErrAmbiguous) {
			t.Fatalf("apply after Stop: %v", err)
		}
		g := newWriteGroup(1)
		g.add(&metav1.BatchOp{Op: &metav1.BatchOp_Put{Put: &metav1.PutRequest{Key: "late"}}})
		ls.batcher.slots <- struct{}{}
		ls.batcher.propose([]*pendingWrite{&g.writes[0]})
		g.wait(ls.stopCh)
		if _, err := g.writes[0].result(); !errors.Is(err, ErrStopped) || errors.Is(err, ErrAmbiguous) {
			t.Fatalf("proposal after Stop: %v", err)
		}
	}
	if err := ls.Snapshot(); !errors.Is(err, ErrStopped) {
		t.Fatalf("Snapshot after Stop: %v", err)
	}
	for range cwatch {
	}
	// Stop waits for the goroutines it owns; others end soon after.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		for id, g := range metaGoroutines() {
			if _, ok := before[id]; !ok {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines of the package left after Stop:\n%s", len(left), strings.Join(left, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
