package schema

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
)

func newKV(t *testing.T) meta.KV {
	t.Helper()
	net := meta.NewFaultNetwork()
	addr := "127.0.0.1:1"
	s, err := meta.Open(meta.Options{
		ID: 1, Voters: []meta.Voter{{ID: 1, Addr: addr}}, Dir: "/m", FS: vfs.NewMem(),
		Snapshots: raft.NewInmemSnapshotStore(), Transport: net.Transport(addr),
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

func TestTopics(t *testing.T) {
	ctx, st := context.Background(), Store{newKV(t)}
	if err := st.CreateTopic(ctx, Topic{Name: "orders", Engine: "file", Partitions: 3, Settings: map[string]string{"retention": "7d"}}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateTopic(ctx, Topic{Name: "orders", Engine: "memory", Partitions: 1}); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	if err := st.CreateTopic(ctx, Topic{Name: "bad", Engine: "file"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("zero partitions: %v", err)
	}
	tp, err := st.Topic(ctx, "orders")
	if err != nil || tp.Value.Engine != "file" || tp.Value.Settings["retention"] != "7d" || tp.Value.Partitions != 3 {
		t.Fatalf("topic: %+v, %v", tp, err)
	}
	sh, err := Get[Shard](ctx, st.KV, ShardKey("orders/2"))
	if err != nil || sh.Value.Topic != "orders" || sh.Value.Partition != 2 {
		t.Fatalf("shard: %+v, %v", sh, err)
	}
	if got, err := st.DeleteTopic(ctx, "orders"); err != nil || got.Name != "orders" || got.Partitions != 3 {
		t.Fatalf("DeleteTopic = %+v, %v", got, err)
	}
	if ts, err := st.Topics(ctx); err != nil || len(ts) != 0 {
		t.Fatalf("topics after delete: %v, %v", ts, err)
	}
	if _, err := Get[Shard](ctx, st.KV, ShardKey("orders/0")); !errors.Is(err, meta.ErrNotFound) {
		t.Fatalf("shard after delete: %v", err)
	}
}

// TestLedgers: ids are unique under concurrency; CAS on ledger metadata has
// one winner (the journal's fencing relies on it); logs list ledgers once.
func TestLedgers(t *testing.T) {
	ctx, st := context.Background(), Store{newKV(t)}
	frag := []Fragment{{FirstEntry: 0, Bookies: []string{"b1", "b2", "b3"}}}
	var mu sync.Mutex
	ids := map[uint64]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := st.CreateLedger(ctx, Ledger{Ensemble: 3, WriteQuorum: 2, AckQuorum: 2, Fragments: frag})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			if ids[l.Value.ID] {
				t.Errorf("ledger id %d handed out twice", l.Value.ID)
			}
			ids[l.Value.ID] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(ids) != 8 {
		t.Fatalf("%d ledgers", len(ids))
	}
	if _, err := st.CreateLedger(ctx, Ledger{Ensemble: 2, WriteQuorum: 3, AckQuorum: 1, Fragments: frag}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("E < Qw: %v", err)
	}
	l, err := st.Ledger(ctx, 1)
	if err != nil || l.Value.State != LedgerOpen || l.Value.LastEntry != -1 {
		t.Fatalf("ledger 1: %+v, %v", l, err)
	}
	// Two recoverers race to fence the ledger: one CAS wins.
	wins := 0
	for range 2 {
		next := l.Value
		next.State = LedgerRecovering
		if _, err := st.CASLedger(ctx, l.Version, next); err == nil {
			wins++
		} else if !errors.Is(err, meta.ErrVersionMismatch) {
			t.Fatal(err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d CAS winners", wins)
	}
	for id := range uint64(3) {
		if _, err := st.AppendLedger(ctx, "orders/0", id+1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.AppendLedger(ctx, "orders/0", 2); !errors.Is(err, ErrExists) {
		t.Fatalf("ledger appended twice: %v", err)
	}
	lg, err := st.Log(ctx, "orders/0")
	if err != nil || len(lg.Value.Ledgers) != 3 || lg.Value.Ledgers[2] != 3 {
		t.Fatalf("log: %+v, %v", lg, err)
	}
}

func TestGroupsOffsetsConfig(t *testing.T) {
	ctx, st := context.Background(), Store{newKV(t)}
	if err := st.CreateGroup(ctx, Group{Name: "g1", Protocol: "kafka"}); err != nil {
		t.Fatal(err)
	}
	for p := range 3 {
		if err := st.CommitOffset(ctx, "g1", "orders", p, Offset{Offset: int64(100 + p)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.CommitOffset(ctx, "g10", "orders", 0, Offset{Offset: 5}); err != nil {
		t.Fatal(err)
	}
	offs, err := st.Offsets(ctx, "g1")
	if err != nil || len(offs) != 3 || offs["orders/2"].Offset != 102 {
		t.Fatalf("offsets: %v, %v", offs, err)
	}
	cfg, err := st.ClusterConfig(ctx)
	if err != nil || cfg.Version != 0 {
		t.Fatalf("unset config: %+v, %v", cfg, err)
	}
	v, err := st.SetClusterConfig(ctx, 0, ClusterConfig{Name: "c1", DefaultEngine: "file"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetClusterConfig(ctx, 0, ClusterConfig{Name: "c2"}); !errors.Is(err, meta.ErrVersionMismatch) {
		t.Fatalf("config CAS against a stale version: %v", err)
	}
	if cfg, err := st.ClusterConfig(ctx); err != nil || cfg.Version != v || cfg.Value.Name != "c1" {
		t.Fatalf("config: %+v, %v", cfg, err)
	}
}

// TestRegistration: a registered node is up while it heartbeats; one that
// stops heartbeating (a crash) is shown as down once its lease expires, and
// a watch on /live/ fires; a node that closes is down at once.
func TestRegistration(t *testing.T) {
	ctx := context.Background()
	kv := newKV(t)
	st := Store{kv}
	// Long enough that keep-alives (every ttl/3, each given ttl/3) keep
	// the leases on a loaded machine under the race detector.
	const ttl = time.Second
	r1, err := Register(ctx, kv, Node{ID: 1, Addr: "a:1228", Roles: []string{"broker"}}, ttl, nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Register(ctx, kv, Node{ID: 2, Addr: "b:1228"}, ttl, nil)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := kv.Watch(wctx, PrefixLive, 0)
	time.Sleep(2 * ttl) // heartbeats keep both up past their TTL
	nodes, err := st.Nodes(ctx)
	if err != nil || len(nodes) != 2 || !nodes[0].Up || !nodes[1].Up {
		t.Fatalf("nodes while heartbeating: %+v, %v", nodes, err)
	}
	r2.abandon()
	crashed := time.Now()
	var down meta.Event
	for down.Type != meta.EventDelete {
		select {
		case wr := <-ch:
			if wr.Err != nil {
				t.Fatal(wr.Err)
			}
			for _, e := range wr.Events {
				if e.Type == meta.EventDelete {
					down = e
				}
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no DELETE on /live/ after the node stopped heartbeating")
		}
	}
	if down.KV.Key != LiveKey(2) || time.Since(crashed) < ttl/2 {
		t.Fatalf("down event %+v after %v", down, time.Since(crashed))
	}
	nodes, err = st.Nodes(ctx)
	if err != nil || len(nodes) != 2 || !nodes[0].Up || nodes[1].Up {
		t.Fatalf("nodes after node 2 crashed: %+v, %v", nodes, err)
	}
	if stale, err := st.StaleNodes(ctx); err != nil || !reflect.DeepEqual(stale, nodes) {
		t.Fatalf("StaleNodes %+v, %v; Nodes %+v", stale, err, nodes)
	}
	if err := r1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	nodes, _ = st.Nodes(ctx)
	if nodes[0].Up {
		t.Fatal("node 1 up after Close")
	}
}

// TestRegistrationRecovers: a node whose lease was lost registers again.
func TestRegistrationRecovers(t *testing.T) {
	ctx := context.Background()
	kv := newKV(t)
	r, err := Register(ctx, kv, Node{ID: 7, Addr: "x:1"}, 300*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	old := r.Lease()
	if err := kv.Revoke(ctx, old); err != nil { // as if it had expired
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := kv.Get(ctx, LiveKey(7)); err == nil && r.Lease() != old {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("node did not register again after losing its lease")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
