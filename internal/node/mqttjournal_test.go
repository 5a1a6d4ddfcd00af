package node

import (
	"slices"
	"testing"

	"github.com/quiremq/quire/internal/config"
)

// MQTT on the journal engine in a three-node cluster: the journal's shard
// namespace is the cluster's (logs in meta, ledgers on every bookie) and
// opening a shard fences its previous writer, so each node must write its
// own MQTT shards (mqtt/journal/<node>/<n>). With one shared name per hash
// bucket, node 2 starting its MQTT server fenced node 1's writer of the
// same shard and node 1's next QoS 1 publish failed. Here nodes 1 and 2
// take turns publishing to one topic, node 1 restarts in between (reopening
// its shards, which must fence nobody), and a subscriber on each node gets
// every message once, in each publisher's order.
func TestMQTTJournalEngineCluster(t *testing.T) {
	cfgs, nodes := startCluster(t, func(t testing.TB) []*config.Config {
		cfgs := clusterConfigs(t)
		for _, c := range cfgs {
			c.Storage.DefaultEngine = "journal"
		}
		return cfgs
	})
	recs := []*recorder{newRecorder(), newRecorder()}
	subs := []string{"sub-1", "sub-2"}
	for i := range 2 {
		c := mqttClient(t, nodes[i], subs[i], false, recs[i])
		subscribe(t, c, "orders/#")
	}
	pub1 := mqttClient(t, nodes[0], "pub-1", true, nil)
	pub2 := mqttClient(t, nodes[1], "pub-2", true, nil)
	routed(t, pub1, "orders/probe-1", recs...)
	routed(t, pub2, "orders/probe-2", recs...)

	publish(t, pub1, "orders/a", 0, 20)
	publish(t, pub2, "orders/b", 0, 20)
	publish(t, pub1, "orders/a", 20, 40)

	waitFor(t, "both subscribers get every message", func() bool {
		for _, r := range recs {
			if len(r.topic("orders/a")) < 40 || len(r.topic("orders/b")) < 20 {
				return false
			}
		}
		return true
	})
	for i, r := range recs {
		if got := r.topic("orders/a"); !slices.Equal(got, seq(0, 40)) {
			t.Errorf("node %d's subscriber got orders/a %v", i+1, got)
		}
		if got := r.topic("orders/b"); !slices.Equal(got, seq(0, 20)) {
			t.Errorf("node %d's subscriber got orders/b %v", i+1, got)
		}
	}

	// Node 1 restarts and publishes again: it reopens (and fences) only
	// its own shards. Its bookie's restart broke the other nodes' streams
	// to it (and there is no spare bookie among three): their writers
	// reconnect and resend, and routed copies are retried until stored,
	// so node 2's subscriber gets everything (at least once, in order).
	pub1.Disconnect(50)
	nodes[0].Stop(t.Context())
	nodes[0] = restartNode(t, cfgs[0])
	pub1 = mqttClient(t, nodes[0], "pub-1", true, nil)
	// Node 2's ledger writers lost their stream to node 1's bookie while
	// it was down: they reconnect and resend, so its publishes succeed.
	publish(t, pub2, "orders/b", 20, 40)
	publish(t, pub1, "orders/a", 40, 60)
	waitFor(t, "node 2's subscriber gets what node 1 took after its restart", func() bool {
		got := slices.Compact(recs[1].topic("orders/a"))
		return len(got) >= 60
	})
	if got := slices.Compact(recs[1].topic("orders/a")); !slices.Equal(got, seq(0, 60)) {
		t.Errorf("node 2's subscriber got orders/a %v", got)
	}
	waitFor(t, "node 2's subscriber gets what node 2 took after node 1's restart", func() bool {
		return len(slices.Compact(recs[1].topic("orders/b"))) >= 40
	})
	if got := slices.Compact(recs[1].topic("orders/b")); !slices.Equal(got, seq(0, 40)) {
		t.Errorf("node 2's subscriber got orders/b %v", got)
	}
}
