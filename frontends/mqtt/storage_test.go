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
	"github.com/quiremq/quire/shard/shardtest"
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

// TestAppendBatchRecords: AppendBatch encodes a batch into one shared
// recordBuf; messages with every field EncodeRecord writes (more headers
// and longer strings than the buffer is sized for, so it grows mid-batch)
// are stored exactly as EncodeRecord encodes each alone, and decode back.
func TestAppendBatchRecords(t *testing.T) {
	ctx := context.Background()
	eng := memory.New(memory.Options{})
	defer eng.Close()
	router, err := shard.NewRouter("memory", nil, map[string]shard.Engine{"memory": eng})
	if err != nil {
		t.Fatal(err)
	}
	st := NewShardStorage(router, 1)
	now := time.UnixMilli(time.Now().UnixMilli())
	var ms []*pubsub.Message
	for i := range 40 {
		m := &pubsub.Message{Topic: "t/" + strings.Repeat("x", i), Payload: []byte{byte(i)}, QoS: byte(i % 3), Time: now}
		if i%2 == 0 {
			m.Publisher = "pub-" + strings.Repeat("p", i)
		}
		if i%5 == 0 {
			m.Retain, m.PayloadFormat, m.ContentType, m.ResponseTopic = true, 1, "text/plain", "reply/"+m.Topic
			m.CorrelationData, m.Expiry, m.PacketID = []byte("corr"), now.Add(time.Hour), uint16(i+1)
			m.Headers = []pubsub.Header{{Key: "k", Value: "v"}, {Key: "mqtt.user", Value: strings.Repeat("u", 100)}}
		}
		ms = append(ms, m)
	}
	pos := make([]Position, len(ms))
	errs := make([]error, len(ms))
	st.AppendBatch(ctx, ms, pos, errs)
	sh, err := eng.Open(ctx, pos[0].Shard)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := sh.Read(ctx, 0, shard.Limits{})
	if err != nil || len(recs) != len(ms) {
		t.Fatalf("read %d records, %v; want %d", len(recs), err, len(ms))
	}
	for i, m := range ms {
		if errs[i] != nil || pos[i].Offset != uint64(i) {
			t.Fatalf("message %d: stored at %+v, %v", i, pos[i], errs[i])
		}
		want := EncodeRecord(m)
		want.Offset = uint64(i)
		if !shardtest.Equal(recs[i], want) {
			t.Fatalf("message %d: stored %+v, EncodeRecord gives %+v", i, recs[i], want)
		}
		got, err := DecodeRecord(&recs[i])
		if err != nil || got.Topic != m.Topic || got.Publisher != m.Publisher || got.QoS != m.QoS || got.ResponseTopic != m.ResponseTopic ||
			!got.Expiry.Equal(m.Expiry) || got.PacketID != m.PacketID || !slices.Equal(got.Headers, m.Headers) {
			t.Fatalf("message %d decodes to %+v, %v; want %+v", i, got, err, m)
		}
	}
}
