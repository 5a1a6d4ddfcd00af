package topics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quiremq/quire/engines/memory"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// newKV runs a one-voter meta server in memory.
func newKV(t *testing.T) meta.KV {
	t.Helper()
	net := meta.NewFaultNetwork()
	addr := "127.0.0.1:1"
	s, err := meta.Open(meta.Options{
		ID: 1, Voters: []meta.Voter{{ID: 1, Addr: addr}}, Dir: "/m", FS: vfs.NewMem(),
		Snapshots: raft.NewInmemSnapshotStore(), Transport: net.Transport(addr),
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond,
		Logger:             slog.New(slog.NewTextHandler(io.Discard, nil)), RaftLogLevel: "error",
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

func TestMetaStore(t *testing.T) {
	kv := newKV(t)
	s := NewMetaStore(kv, true)
	testStore(t, s)
	if !s.Existed() || NewMetaStore(kv, false).Existed() {
		t.Error("Existed does not report what it was given")
	}
	// The records are schema's: a topic and one shard record per partition.
	ctx := context.Background()
	if err := s.Create(ctx, Topic{Name: "t", Engine: "file", Partitions: 2, Node: 3}); err != nil {
		t.Fatal(err)
	}
	sh, err := schema.Get[schema.Shard](ctx, kv, schema.ShardKey("t/1"))
	if err != nil || sh.Value.Owner != 3 || sh.Value.Engine != "file" {
		t.Errorf("shard record = %+v, %v", sh, err)
	}
	if got, err := s.Get(ctx, "t"); err != nil || got.Node != 3 {
		t.Errorf("Get = %+v, %v", got, err)
	}
}

func TestMigrate(t *testing.T) {
	ctx := context.Background()
	kv := newKV(t)
	to := NewMetaStore(kv, true)
	from := NewMemStore(true, Topic{Name: "a", Engine: "file", Partitions: 1}, Topic{Name: "b", Engine: "memory", Partitions: 2})
	if n, err := Migrate(ctx, from, to, 7); err != nil || n != 2 {
		t.Fatalf("Migrate = %d, %v", n, err)
	}
	// Again (a start interrupted before the file was renamed): nothing to do.
	if n, err := Migrate(ctx, from, to, 7); err != nil || n != 0 {
		t.Fatalf("second Migrate = %d, %v", n, err)
	}
	if b, err := to.Get(ctx, "b"); err != nil || b.Node != 7 || b.Partitions != 2 {
		t.Errorf("b = %+v, %v", b, err)
	}
	// Another node's registry with a topic of the same name: refused.
	if _, err := Migrate(ctx, from, to, 8); !errors.Is(err, ErrMigrate) {
		t.Errorf("clashing Migrate = %v, want ErrMigrate", err)
	}
}

// Two registries of two nodes over one Store: each lists every topic, opens
// only the shards it hosts, and Sync deletes the shards of a topic deleted
// through the other node.
func TestRegistryHostedElsewhere(t *testing.T) {
	ctx := context.Background()
	store := NewMetaStore(newKV(t), true)
	type nodeReg struct {
		mem, disk *memory.Engine
		reg       *Registry
	}
	var nodes []nodeReg
	for id := uint64(1); id <= 2; id++ {
		mem, disk := memory.New(memory.Options{}), memory.New(memory.Options{})
		reg := NewRegistry(Options{Store: store, Router: mustRouter(t, mem, disk), NodeID: id, Ephemeral: map[string]bool{"memory": true}})
		if err := reg.Open(ctx); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, nodeReg{mem, disk, reg})
	}
	if _, err := nodes[0].reg.Create(ctx, "orders", "", 2); err != nil {
		t.Fatal(err)
	}
	// The router puts sensors/# on the memory engine: Sync deletes each
	// shard through its own engine.
	if _, err := nodes[0].reg.Create(ctx, "sensors/t", "", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[1].reg.Create(ctx, "orders", "", 1); !errors.Is(err, ErrExists) {
		t.Errorf("create through node 2 = %v, want ErrExists", err)
	}
	in, err := nodes[1].reg.Get(ctx, "orders")
	if err != nil || in.Node != 1 || in.Shards[1].Node != 1 || in.Shards[1].Error != "" {
		t.Errorf("node 2 sees %+v, %v", in, err)
	}
	if in, _ := nodes[0].reg.Get(ctx, "orders"); in.Shards[1].Node != 0 || in.Shards[1].Error != "" {
		t.Errorf("node 1 sees %+v", in)
	}
	if names, _ := nodes[1].disk.List(ctx); len(names) != 0 {
		t.Errorf("node 2 holds shards %v", names)
	}
	// A restart of node 2 does not look for node 1's shards.
	reg2 := NewRegistry(Options{Store: store, Router: nodes[1].reg.opts.Router, NodeID: 2})
	if err := reg2.Open(ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"orders", "sensors/t"} {
		if err := reg2.Delete(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if names, _ := nodes[0].disk.List(ctx); len(names) != 2 {
		t.Fatalf("node 1 shards before Sync = %v", names)
	}
	if names, _ := nodes[0].mem.List(ctx); len(names) != 1 {
		t.Fatalf("node 1 memory shards before Sync = %v", names)
	}
	if err := nodes[0].reg.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if names, _ := nodes[0].disk.List(ctx); len(names) != 0 {
		t.Errorf("node 1 shards after Sync = %v", names)
	}
	if names, _ := nodes[0].mem.List(ctx); len(names) != 0 {
		t.Errorf("node 1 memory shards after Sync = %v", names)
	}
	if _, err := nodes[0].reg.Shard("orders", 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("Shard after Sync = %v", err)
	}
}
