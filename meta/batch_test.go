package meta

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// Tests of the coalesced paths: many goroutines sharing one Client (one
// Batch stream per node), the leader's write batcher, and follower
// forwarding of batches.

// writeBatches returns how many Raft entries the node's write batcher
// proposed and how many writes they carried.
func writeBatches(t *testing.T, s *Server) (entries, writes uint64) {
	t.Helper()
	var m dto.Metric
	if err := s.metrics.batchOps.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), uint64(m.GetHistogram().GetSampleSum())
}

// TestBatchCASRace: goroutines sharing one Client (and goroutines calling a
// follower in process, whose writes are forwarded to the leader as
// batches) increment one counter with CAS loops. Every increment is
// acknowledged exactly once, no two CASes win on the same version, the
// final count is the number of acknowledgements — and the leader committed
// several writes per Raft entry (the race is decided inside batches).
func TestBatchCASRace(t *testing.T) {
	c := newTestCluster(t, 3, grpcTransport, false, nil)
	lead := c.leader()
	fol := c.follower()
	ctx := ctxT(t)
	shared := c.client()
	const workers, incs = 12, 8
	if _, err := shared.Put(ctx, "counter", []byte("0"), IfVersion(0)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	winners := map[uint64]string{} // expected version -> winner
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	mismatches := 0
	for w := range workers {
		var kv KV = shared
		if w%4 == 3 {
			kv = c.nodes[fol].srv // forwarded by the follower
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < incs; {
				cur, err := kv.Get(ctx, "counter")
				if errors.Is(err, ErrNotLeader) { // in process, during an election
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				n, _ := strconv.Atoi(string(cur.Value))
				_, err = kv.Put(ctx, "counter", []byte(strconv.Itoa(n+1)), IfVersion(cur.Version))
				var vm *VersionMismatchError
				if errors.As(err, &vm) {
					if vm.Current == cur.Version || vm.Key != "counter" {
						errs <- fmt.Errorf("mismatch error %+v for expected version %d", vm, cur.Version)
						return
					}
					mu.Lock()
					mismatches++
					mu.Unlock()
					continue
				}
				if errors.Is(err, ErrNotLeader) { // not applied: try again
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if prev, ok := winners[cur.Version]; ok {
					errs <- fmt.Errorf("two CAS winners on version %d: %s and w%d", cur.Version, prev, w)
				}
				winners[cur.Version] = fmt.Sprintf("w%d-%d", w, i)
				mu.Unlock()
				i++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	final, err := shared.Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if string(final.Value) != strconv.Itoa(workers*incs) || len(winners) != workers*incs {
		t.Fatalf("counter = %s with %d winners, want %d", final.Value, len(winners), workers*incs)
	}
	if mismatches == 0 {
		t.Error("no CAS lost a race: the test raced nothing")
	}
	entries, writes := writeBatches(t, c.nodes[lead].srv)
	t.Logf("%d writes in %d entries, %d CASes lost", writes, entries, mismatches)
	if writes < uint64(workers*incs) || entries >= writes {
		t.Errorf("leader committed %d writes in %d entries: no write was batched", writes, entries)
	}
}

// batchConn opens a raw Batch stream to addr.
func batchConn(t *testing.T, addr string, noForward bool) grpc.BidiStreamingClient[metav1.BatchRequest, metav1.BatchResponse] {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx := ctxT(t)
	if noForward {
		ctx = forwardCtx(ctx)
	}
	st, err := metav1.NewMetaClient(cc).Batch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func putOp(key, val string, check bool, version uint64) *metav1.BatchOp {
	return &metav1.BatchOp{Op: &metav1.BatchOp_Put{Put: &metav1.PutRequest{Key: key, Value: []byte(val), CheckVersion: check, ExpectVersion: version}}}
}

// roundTrip sends one request and collects its results (possibly from
// several responses).
func roundTrip(t *testing.T, st grpc.BidiStreamingClient[metav1.BatchRequest, metav1.BatchResponse], id uint64, ops []*metav1.BatchOp) ([]*metav1.BatchResult, int) {
	t.Helper()
	if err := st.Send(&metav1.BatchRequest{Id: id, Ops: ops}); err != nil {
		t.Fatal(err)
	}
	res := make([]*metav1.BatchResult, len(ops))
	msgs := 0
	for got := 0; got < len(ops); {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.Id != id {
			t.Fatalf("response to request %d, want %d", resp.Id, id)
		}
		copy(res[resp.Offset:], resp.Results)
		got += len(resp.Results)
		msgs++
	}
	return res, msgs
}

// TestBatchPartialFailure sends one batch in which some CASes fail, through
// the leader and through a follower that forwards it. Each op has its own
// result, the failed ones change nothing, the successful ones take
// consecutive revisions in the order of the batch, and a watcher sees
// exactly those changes in that order.
func TestBatchPartialFailure(t *testing.T) {
	c := newTestCluster(t, 3, grpcTransport, false, nil)
	ctx := ctxT(t)
	kv := c.client()
	old, err := kv.Put(ctx, "b/old", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	for _, via := range []string{"leader", "follower"} {
		t.Run(via, func(t *testing.T) {
			node := c.leader()
			if via == "follower" {
				node = c.follower()
			}
			p := via + "/"
			start := c.nodes[c.leader()].srv.Revision()
			w := kv.Watch(ctx, p, start+1)
			st := batchConn(t, c.nodes[node].addr, false)
			ops := []*metav1.BatchOp{
				putOp(p+"a", "1", true, 0),                 // create: ok
				putOp(p+"b", "1", true, 12345),             // CAS on a missing key: fails
				putOp(p+"a", "2", true, 0),                 // create again: fails (a exists now)
				putOp(p+"c", "1", false, 0),                // plain put: ok
				putOp("b/old", "y", true, old.Version+999), // stale CAS: fails
				{Op: &metav1.BatchOp_Delete{Delete: &metav1.DeleteRequest{Key: p + "missing"}}},   // not found
				{Op: &metav1.BatchOp_Get{Get: &metav1.GetRequest{Key: "b/old"}}},                  // linearizable read
				{Op: &metav1.BatchOp_Put{Put: &metav1.PutRequest{Key: "", Value: []byte("bad")}}}, // invalid
			}
			res, _ := roundTrip(t, st, 1, ops)
			wantErr := []error{nil, ErrVersionMismatch, ErrVersionMismatch, nil, ErrVersionMismatch, ErrNotFound, nil, ErrInvalid}
			for i, r := range res {
				var got error
				if e := r.GetError(); e != nil {
					got = opErrorToErr(e)
				}
				if (got == nil) != (wantErr[i] == nil) || wantErr[i] != nil && !errors.Is(got, wantErr[i]) {
					t.Fatalf("op %d: %v, want %v", i, got, wantErr[i])
				}
			}
			a, cc := res[0].GetPut().GetKv(), res[3].GetPut().GetKv()
			if a.GetVersion() == 0 || cc.GetVersion() <= a.GetVersion() {
				t.Fatalf("versions a=%d c=%d", a.GetVersion(), cc.GetVersion())
			}
			var vm *VersionMismatchError
			if !errors.As(opErrorToErr(res[2].GetError()), &vm) || vm.Current != a.GetVersion() {
				t.Fatalf("second create of a: %v, want current version %d", res[2].GetError(), a.GetVersion())
			}
			if g := res[6].GetGet(); !g.GetFound() || string(g.GetKv().GetValue()) != "x" {
				t.Fatalf("read in the batch: %v", res[6])
			}
			// The watcher sees a then c and nothing else under the prefix.
			var evs []Event
			for len(evs) < 2 {
				select {
				case r := <-w:
					if r.Err != nil {
						t.Fatal(r.Err)
					}
					evs = append(evs, r.Events...)
				case <-time.After(10 * time.Second):
					t.Fatalf("watch delivered %d events", len(evs))
				}
			}
			if len(evs) != 2 || evs[0].KV.Key != p+"a" || evs[0].Revision != a.GetVersion() || evs[1].KV.Key != p+"c" || evs[1].Revision != cc.GetVersion() {
				t.Fatalf("watch events %+v", evs)
			}
			if got, err := kv.Get(ctx, "b/old"); err != nil || got.Version != old.Version {
				t.Fatalf("b/old after a failed CAS: %+v, %v", got, err)
			}
		})
	}
}

// TestBatchNotLeader: a follower asked not to forward answers NOT_LEADER
// with the leader's address for every leader-only op of a batch, and serves
// its stale reads.
func TestBatchNotLeader(t *testing.T) {
	c := newTestCluster(t, 3, grpcTransport, false, nil)
	ctx := ctxT(t)
	if _, err := c.client().Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	c.converge()
	lead, fol := c.leader(), c.follower()
	st := batchConn(t, c.nodes[fol].addr, true)
	res, _ := roundTrip(t, st, 7, []*metav1.BatchOp{
		putOp("k", "w", false, 0),
		{Op: &metav1.BatchOp_Get{Get: &metav1.GetRequest{Key: "k"}}},
		{Op: &metav1.BatchOp_Get{Get: &metav1.GetRequest{Key: "k", Stale: true}}},
	})
	for i := range 2 {
		var nl *NotLeaderError
		if !errors.As(opErrorToErr(res[i].GetError()), &nl) || nl.LeaderAddr != c.nodes[lead].addr {
			t.Fatalf("op %d on a follower: %v, want NOT_LEADER naming %s", i, res[i], c.nodes[lead].addr)
		}
	}
	if g := res[2].GetGet(); string(g.GetKv().GetValue()) != "v" {
		t.Fatalf("stale read: %v", res[2])
	}
}

// TestBatchLargeResults: results of one request that exceed a message are
// sent in several responses and reassembled, through a raw stream and
// through many goroutines sharing a Client.
func TestBatchLargeResults(t *testing.T) {
	c := newTestCluster(t, 1, grpcTransport, false, nil)
	ctx := ctxT(t)
	kv := c.client()
	val := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i)}, 700<<10) }
	var ops []*metav1.BatchOp
	for i := range 4 {
		if _, err := kv.Put(ctx, fmt.Sprintf("big/%d", i), val(i)); err != nil {
			t.Fatal(err)
		}
		ops = append(ops, &metav1.BatchOp{Op: &metav1.BatchOp_Get{Get: &metav1.GetRequest{Key: fmt.Sprintf("big/%d", i), Stale: true}}})
	}
	res, msgs := roundTrip(t, batchConn(t, c.nodes[0].addr, true), 1, ops)
	if msgs < 2 {
		t.Errorf("4 results of 700 KiB came in %d response(s)", msgs)
	}
	for i, r := range res {
		if !bytes.Equal(r.GetGet().GetKv().GetValue(), val(i)) {
			t.Fatalf("result %d: wrong value", i)
		}
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := kv.Get(ctx, fmt.Sprintf("big/%d", g%4))
			if err != nil || !bytes.Equal(got.Value, val(g%4)) {
				t.Errorf("get %d: %v", g, err)
			}
		}()
	}
	wg.Wait()
}

// TestBatchFailover kills the leader (connections cut first, streams
// break with batches in flight) while goroutines sharing two Clients,
// and goroutines calling a follower in process, CAS-append to lists. Writes
// whose stream broke after they were sent are not retried (ErrAmbiguous,
// recorded as unknown); writes that never left, or that the server
// rejected as not applied, are retried. Every acknowledged append is
// present exactly once, none twice, and no version was acknowledged with
// two values.
func TestBatchFailover(t *testing.T) {
	c := newTestCluster(t, 3, grpcTransport, false, nil)
	c.leader()
	fol := c.follower()
	ctx := ctxT(t)
	logs := []*ackLog{newAckLog(), newAckLog()}
	clients := []KV{c.client(), c.client()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 16 {
		kv := clients[i%2]
		if i%8 == 7 {
			kv = c.nodes[fol].srv
		}
		wg.Add(1)
		go logs[i%2].run(ctx, kv, fmt.Sprintf("list%d", i%2), fmt.Sprintf("c%d", i), stop, &wg)
	}
	time.Sleep(400 * time.Millisecond)
	old := c.leader() // the follower may lead by now after an election: fine
	c.kill(old)
	c.leader()
	time.Sleep(600 * time.Millisecond)
	close(stop)
	wg.Wait()
	c.converge()
	checkLists(ctx, t, c, logs)
}
