package mqtt

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quiremq/quire/engines/memory"
	"github.com/quiremq/quire/frontends/pubsub"
	"github.com/quiremq/quire/shard"
)

// TestNodeScopedShards: two nodes' ShardStorages over one engine whose
// shards they share (as the journal engine's are, in meta) name their
// shards by node when NodeScoped, so the same topic goes to a different
// shard per node, and each node's OpenAll opens its own shards only —
// never another node's (on the journal engine that open would fence the
// other node's writer) nor the unscoped names; an unscoped storage opens
// no scoped shard either.
func TestNodeScopedShards(t *testing.T) {
	ctx := context.Background()
	eng := memory.New(memory.Options{})
	defer eng.Close()
	storage := func() *ShardStorage {
		router, err := shard.NewRouter("memory", nil, map[string]shard.Engine{"memory": eng})
		if err != nil {
			t.Fatal(err)
		}
		return NewShardStorage(router, 4)
	}
	plain := storage()
	n1, n2 := storage().NodeScoped(1, "memory"), storage().NodeScoped(22, "memory")
	m := &pubsub.Message{Topic: "plant/7/temp", Payload: []byte("21.5"), QoS: 1, Time: time.Now()}
	want := map[*ShardStorage]string{plain: ShardName("memory", m.Topic, 4)}
	want[n1] = strings.Replace(want[plain], "mqtt/memory/", "mqtt/memory/1/", 1)
	want[n2] = strings.Replace(want[plain], "mqtt/memory/", "mqtt/memory/22/", 1)
	for st, name := range want {
		pos, err := st.Append(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		if pos.Shard != name || pos.Offset != 0 {
			t.Fatalf("appended at %+v, want %s offset 0 (a shard of its own)", pos, name)
		}
	}
	for _, name := range []string{"mqtt/memory/1/x", "mqtt/memory/1/2/3", "mqtt/memory/", "mqtt/memoryx/1"} {
		if _, err := eng.Create(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	for st, name := range want {
		fresh := storage()
		fresh.scoped = st.scoped
		if err := fresh.OpenAll(ctx); err != nil {
			t.Fatal(err)
		}
		if got := slices.Sorted(maps.Keys(fresh.Frontiers())); !slices.Equal(got, []string{name}) {
			t.Fatalf("OpenAll of the storage naming %s opened %q", name, got)
		}
	}
}
