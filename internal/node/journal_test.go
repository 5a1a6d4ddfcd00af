package node

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/engines/journal"
	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/shard"
	"github.com/quiremq/quire/shard/shardtest"
)

// TestNodeJournalEngine: a single node (its own meta and bookie) serves
// topics on the journal engine. A rule routes orders/# to it; QoS 1
// publishes over MQTT are acknowledged after the ledger append, and a topic
// created through the registry gets a journal shard replicated as the
// config says for one node (1/1/1, recorded with the shard). After a
// restart every published message and every appended record is read back
// from the journal engine.
func TestNodeJournalEngine(t *testing.T) {
	addr := freeAddrs(t, 1)[0]
	cfg := testConfig(t.TempDir())
	cfg.GRPC.Addr = addr
	cfg.MetaAddrs = []string{"1@" + addr}
	cfg.Storage.Rules = []config.Rule{{Match: "orders/#", Engine: "journal", AckQuorum: 1}, {Match: "sensors/#", Engine: "memory"}}
	ctx := context.Background()

	n := startNode(t, cfg, nil)
	c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + n.MQTTAddr("tcp").String()).SetClientID("pub").
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	const msgs = 60
	want := map[string]bool{}
	for i := range msgs {
		topic, payload := fmt.Sprintf("orders/eu/%d", i%4), fmt.Sprintf("order-%d", i)
		if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
		want[topic+"="+payload] = true
	}
	c.Disconnect(50)

	info, err := n.broker.topics().Create(ctx, "orders/archive", "", 1)
	if err != nil {
		t.Fatal(err)
	}
	if info.Engine != journal.Name {
		t.Fatalf("topic orders/archive is on engine %q, want journal (its rule)", info.Engine)
	}
	je := n.broker.engines[journal.Name]
	s, err := je.Open(ctx, "orders/archive/0")
	if err != nil {
		t.Fatal(err)
	}
	if q := s.(*journal.Shard).Quorum(); q != (journal.Quorum{Ensemble: 1, WriteQuorum: 1, AckQuorum: 1}) {
		t.Fatalf("shard quorum %v, want 1/1/1 on a single node", q)
	}
	var recs []shard.Record
	for i := range 25 {
		recs = append(recs, shard.Record{Key: []byte("k"), Value: fmt.Appendf(nil, "archived-%d", i)})
	}
	if _, err := s.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if err := n.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	n = startNode(t, cfg, nil)
	je = n.broker.engines[journal.Name]
	names, err := je.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, name := range names {
		if !strings.HasPrefix(name, "mqtt/journal/") {
			continue
		}
		s, err := je.Open(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range readShard(t, s) {
			got[string(r.Key)+"="+string(r.Value)] = true
		}
	}
	for m := range want {
		if !got[m] {
			t.Errorf("published %s, not in the journal shards %v after a restart", m, names)
		}
	}
	if len(got) != len(want) {
		t.Errorf("read %d messages back, published %d", len(got), len(want))
	}
	s, err = je.Open(ctx, "orders/archive/0")
	if err != nil {
		t.Fatal(err)
	}
	if q := s.(*journal.Shard).Quorum(); q != (journal.Quorum{Ensemble: 1, WriteQuorum: 1, AckQuorum: 1}) {
		t.Fatalf("after a restart the shard quorum is %v, want 1/1/1", q)
	}
	back := readShard(t, s)
	if len(back) != len(recs) {
		t.Fatalf("read %d records of orders/archive/0 back, appended %d", len(back), len(recs))
	}
	for i, r := range back {
		if string(r.Value) != string(recs[i].Value) || r.Offset != uint64(i) {
			t.Fatalf("record %d: offset %d %q, want %q", i, r.Offset, r.Value, recs[i].Value)
		}
	}
}

func readShard(t *testing.T, s shard.Shard) []shard.Record {
	t.Helper()
	low, _ := s.Watermarks()
	return shardtest.ReadAll(t, s, low)
}

// A journal shard's replication comes from the first rule matching its
// topic (journal rules only), over [storage.journal]'s; MQTT's hashed
// shards take [storage.journal]'s.
func TestJournalSettings(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.MetaAddrs = []string{"1@a:1228", "2@b:1228", "3@c:1228"}
	cfg.Storage.Rules = []config.Rule{
		{Match: "orders/#", Engine: "journal", Ensemble: 5, WriteQuorum: 3},
		{Match: "orders/eu", Engine: "journal", Ensemble: 4}, // shadowed by the first
		{Match: "logs/#", Engine: "file"},
		{Match: "#", Engine: "journal", AckQuorum: 1},
	}
	for _, tc := range []struct {
		shard string
		want  journal.Quorum
	}{
		{"orders/eu/0", journal.Quorum{Ensemble: 5, WriteQuorum: 3, AckQuorum: 2}},
		{"orders/12", journal.Quorum{Ensemble: 5, WriteQuorum: 3, AckQuorum: 2}},
		{"logs/x/3", journal.Quorum{Ensemble: 3, WriteQuorum: 2, AckQuorum: 2}},
		{"other/7", journal.Quorum{Ensemble: 3, WriteQuorum: 2, AckQuorum: 1}},
		{"mqtt/journal/7", journal.Quorum{Ensemble: 3, WriteQuorum: 2, AckQuorum: 2}},
	} {
		got, err := journal.Quorum{Ensemble: 1, WriteQuorum: 1, AckQuorum: 1}.Apply(journalSettings(cfg, tc.shard))
		if err != nil || got != tc.want {
			t.Errorf("%s: %v, %v; want %v", tc.shard, got, err, tc.want)
		}
	}
}
