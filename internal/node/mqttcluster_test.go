package node

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/frontends/mqtt"
	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/meta/schema"
	"github.com/quiremq/quire/shard"
)

// startCluster starts the nodes of mk's configs (one meta cluster), up to
// three times.
func startCluster(t testing.TB, mk func(testing.TB) []*config.Config) ([]*config.Config, []*Node) {
	t.Helper()
	ctx := context.Background()
	for try := 0; ; try++ {
		cfgs := mk(t)
		nodes := make([]*Node, len(cfgs))
		errc := make(chan error, len(cfgs))
		for i, c := range cfgs {
			nodes[i] = newNode(t, c, nil)
			go func() { errc <- nodes[i].Start(ctx) }()
		}
		var errs []error
		for range cfgs {
			if err := <-errc; err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) == 0 {
			t.Cleanup(func() {
				for _, n := range nodes {
					n.Stop(context.Background())
				}
			})
			return cfgs, nodes
		}
		for _, n := range nodes {
			n.Stop(ctx)
		}
		// A port picked as free may have been taken since, or meta's
		// leadership may have moved while a node started (a loaded
		// machine): start again.
		if try == 2 {
			t.Fatal(errors.Join(errs...))
		}
		t.Logf("starting the cluster again: %v", errors.Join(errs...))
	}
}

// restartNode starts a node again on cfg (a stopped node's), up to three
// times (meta's leadership may move while it starts on a loaded machine).
func restartNode(t *testing.T, cfg *config.Config) *Node {
	t.Helper()
	for try := 0; ; try++ {
		n := newNode(t, cfg, nil)
		err := n.Start(context.Background())
		if err == nil {
			t.Cleanup(func() { n.Stop(context.Background()) })
			return n
		}
		if try == 2 {
			t.Fatal(err)
		}
		t.Logf("starting node %d again: %v", cfg.NodeID, err)
	}
}

// recorder collects the messages a paho client receives.
type recorder struct {
	mu  sync.Mutex
	got map[string][]string // topic → payloads in arrival order
}

func newRecorder() *recorder { return &recorder{got: map[string][]string{}} }

func (r *recorder) handle(_ paho3.Client, m paho3.Message) {
	r.mu.Lock()
	r.got[m.Topic()] = append(r.got[m.Topic()], string(m.Payload()))
	r.mu.Unlock()
}

func (r *recorder) topic(name string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got[name]...)
}

// waitFor waits up to a minute for cond.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("after a minute: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mqttClient(t *testing.T, n *Node, id string, clean bool, rec *recorder) paho3.Client {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker("tcp://" + n.MQTTAddr("tcp").String()).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetOrderMatters(true)
	if rec != nil {
		o.SetDefaultPublishHandler(rec.handle)
	}
	c := paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

func subscribe(t *testing.T, c paho3.Client, filter string) {
	t.Helper()
	if tok := c.Subscribe(filter, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

func publish(t *testing.T, c paho3.Client, topic string, from, to int) {
	t.Helper()
	if err := publishQoS1(c, topic, from, to); err != nil {
		t.Fatal(err)
	}
}

// publishQoS1 publishes the payloads "from".."to-1" one after the other.
func publishQoS1(c paho3.Client, topic string, from, to int) error {
	for i := from; i < to; i++ {
		if tok := c.Publish(topic, 1, false, strconv.Itoa(i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return fmt.Errorf("publish %s %d: %v", topic, i, tok.Error())
		}
	}
	return nil
}

// seq is the payloads "from".."to-1".
func seq(from, to int) []string {
	var s []string
	for i := from; i < to; i++ {
		s = append(s, strconv.Itoa(i))
	}
	return s
}

// routed waits until a probe published through pub on probeTopic reaches
// every recorder: the subscriptions' routes reached the publisher's node.
func routed(t *testing.T, pub paho3.Client, probeTopic string, recs ...*recorder) {
	t.Helper()
	i := 0
	waitFor(t, "a probe published on "+probeTopic+" reaches the subscribers on the other nodes", func() bool {
		publish(t, pub, probeTopic, i, i+1)
		i++
		time.Sleep(100 * time.Millisecond)
		for _, r := range recs {
			if len(r.topic(probeTopic)) == 0 {
				return false
			}
		}
		return true
	})
}

// storedCopies counts the records of topic in node n's file-engine MQTT
// shards, by origin ("" for published on n).
func storedCopies(t *testing.T, n *Node, topic string) map[string]int {
	t.Helper()
	out := map[string]int{}
	eachStored(t, n, func(r *shard.Record) {
		if string(r.Key) == topic {
			out[recordOrigin(r)]++
		}
	})
	return out
}

// eachStored calls fn for each record of node n's file-engine MQTT
// shards.
func eachStored(t *testing.T, n *Node, fn func(*shard.Record)) {
	t.Helper()
	ctx := context.Background()
	e := n.broker.engines["file"]
	names, err := e.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if !strings.HasPrefix(name, "mqtt/") {
			continue
		}
		s, err := e.Open(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range readShard(t, s) {
			fn(&r)
		}
	}
}

// recordOrigin is r's HeaderOrigin, "" for none.
func recordOrigin(r *shard.Record) string {
	for _, h := range r.Headers {
		if h.Key == mqtt.HeaderOrigin {
			return string(h.Value)
		}
	}
	return ""
}

// TestNodeMQTTClusterRouting: three nodes; QoS 1 messages published on any
// node reach the subscribers of every node, each once and in order per
// publisher; each message is stored once per node (no forwarding loops);
// a persistent session on a node that was down while another took
// messages gets them after its node restarts.
func TestNodeMQTTClusterRouting(t *testing.T) {
	cfgs, nodes := startCluster(t, clusterConfigs)
	rec1, rec2, rec3 := newRecorder(), newRecorder(), newRecorder()
	sub1 := mqttClient(t, nodes[0], "sub1", true, rec1)
	sub2 := mqttClient(t, nodes[1], "sub2", false, rec2) // persistent
	sub3 := mqttClient(t, nodes[2], "sub3", true, rec3)
	for _, c := range []paho3.Client{sub1, sub2, sub3} {
		subscribe(t, c, "orders/#")
	}
	pub1 := mqttClient(t, nodes[0], "pub1", true, nil)
	pub3 := mqttClient(t, nodes[2], "pub3", true, nil)
	routed(t, pub1, "orders/probe1", rec2, rec3)
	routed(t, pub3, "orders/probe3", rec1, rec2)

	const n = 200
	errc := make(chan error, 2)
	go func() { errc <- publishQoS1(pub1, "orders/eu", 0, n) }()
	go func() { errc <- publishQoS1(pub3, "orders/us", 0, n/2) }()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range []*recorder{rec1, rec2, rec3} {
		waitFor(t, fmt.Sprintf("subscriber on node %d gets every message", i+1), func() bool {
			return len(r.topic("orders/eu")) >= n && len(r.topic("orders/us")) >= n/2
		})
	}
	// No loop: each node stores each message once (the publisher's node
	// as its own, the others marked with its id).
	for i, nd := range nodes {
		for topic, origin := range map[string]string{"orders/eu": "1", "orders/us": "3"} {
			want := map[string]int{origin: n}
			if topic == "orders/us" {
				want = map[string]int{origin: n / 2}
			}
			if strconv.Itoa(i+1) == origin {
				want = map[string]int{"": want[origin]}
			}
			if got := storedCopies(t, nd, topic); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("node %d stores %s by origin %v, want %v", i+1, topic, got, want)
			}
		}
	}
	for i, r := range []*recorder{rec1, rec2, rec3} {
		if got := r.topic("orders/eu"); !slices.Equal(got, seq(0, n)) {
			t.Errorf("subscriber on node %d got orders/eu %v, want 0..%d once each in order", i+1, got, n-1)
		}
		if got := r.topic("orders/us"); !slices.Equal(got, seq(0, n/2)) {
			t.Errorf("subscriber on node %d got orders/us %v, want 0..%d once each in order", i+1, got, n/2-1)
		}
	}

	// sub2's session stays on node 2, offline; node 2 stops; node 1 takes
	// more messages; node 2 restarts and sub2 resumes its session there.
	sub2.Disconnect(250)
	ctx := context.Background()
	if err := nodes[1].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// Node 2's routes stay in meta while it is down (its persistent
	// session's filter among them).
	var r schema.Record[mqttRoutes]
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	err := schema.RetryNotLeader(rctx, func() (err error) {
		r, err = schema.Get[mqttRoutes](rctx, nodes[0].meta.kv(), MQTTRouteKey(2))
		return err
	})
	cancel()
	if err != nil || r.Value.Node != 2 || !slices.Contains(r.Value.Filters, "orders/#") {
		t.Errorf("node 2's routes in meta while it is down: %+v, %v", r.Value, err)
	}
	publish(t, pub1, "orders/eu", n, 2*n)
	waitFor(t, "the subscriber on node 3 gets the messages published while node 2 is down", func() bool {
		return len(rec3.topic("orders/eu")) >= 2*n
	})
	nodes[1] = restartNode(t, cfgs[1])
	rec2b := newRecorder()
	mqttClient(t, nodes[1], "sub2", false, rec2b)
	waitFor(t, "the resumed session on the restarted node 2 gets the messages node 1 took meanwhile", func() bool {
		got := rec2b.topic("orders/eu")
		return len(got) > 0 && got[len(got)-1] == strconv.Itoa(2*n-1)
	})
	// In order; a message sub2 had not acknowledged before it went may
	// come again (at least once), none is missing.
	got := rec2b.topic("orders/eu")
	next := n
	for _, p := range got {
		v, _ := strconv.Atoi(p)
		if v > next {
			t.Fatalf("node 2's resumed session got %v: %d is missing", got, next)
		}
		if v == next {
			next++
		}
	}
	if next != 2*n {
		t.Fatalf("node 2's resumed session got %v, want %d..%d", got, n, 2*n-1)
	}
	if got := rec3.topic("orders/eu"); !slices.Equal(got, seq(0, 2*n)) {
		t.Errorf("subscriber on node 3 got %v, want 0..%d once each in order", got, 2*n-1)
	}
	if v := counterSum(t, nodes[2], "quire_mqtt_cluster_forwarded_messages_total", "1"); v < 2*n {
		t.Errorf("node 3 counts %v messages forwarded from node 1, want at least %d", v, 2*n)
	}

	// The publisher's node restarts right after taking messages: node 3
	// pulls the rest from its cursors once node 1 is back.
	publish(t, pub1, "orders/eu", 2*n, 3*n)
	if err := nodes[0].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	nodes[0] = restartNode(t, cfgs[0])
	waitFor(t, "the subscriber on node 3 gets what node 1 took right before its restart", func() bool {
		return len(rec3.topic("orders/eu")) >= 3*n
	})
	if got := rec3.topic("orders/eu"); !slices.Equal(got, seq(0, 3*n)) {
		t.Errorf("subscriber on node 3 got %v, want 0..%d once each in order", got, 3*n-1)
	}
}

// counterSum is the value of counter name with label peer on node n.
func counterSum(t *testing.T, n *Node, name, peer string) int {
	t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "peer" && l.GetValue() == peer {
					v += m.GetCounter().GetValue()
				}
			}
		}
	}
	return int(v)
}

// twoNodeConfigs are the first two of clusterConfigs, as a two-voter
// cluster.
func twoNodeConfigs(t testing.TB) []*config.Config {
	cfgs := clusterConfigs(t)[:2]
	for _, c := range cfgs {
		c.MetaAddrs = c.MetaAddrs[:2]
	}
	return cfgs
}

// TestNodeMQTTClusterTwoNodes: both ways between two nodes, QoS 2 comes
// through as QoS 2 once each, and a retained message published on one
// node is retained on the other, for a subscriber that comes later.
func TestNodeMQTTClusterTwoNodes(t *testing.T) {
	_, nodes := startCluster(t, twoNodeConfigs)
	rec1, rec2 := newRecorder(), newRecorder()
	sub1 := mqttClient(t, nodes[0], "sub1", true, rec1)
	sub2 := mqttClient(t, nodes[1], "sub2", true, rec2)
	var qos2 []byte
	var mu sync.Mutex
	for _, c := range []paho3.Client{sub1, sub2} {
		if tok := c.Subscribe("q/#", 2, func(_ paho3.Client, m paho3.Message) {
			if strings.HasPrefix(m.Topic(), "q/from") {
				mu.Lock()
				qos2 = append(qos2, m.Qos())
				mu.Unlock()
			}
			rec := rec1
			if c == sub2 {
				rec = rec2
			}
			rec.handle(nil, m)
		}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	pub1 := mqttClient(t, nodes[0], "pub1", true, nil)
	pub2 := mqttClient(t, nodes[1], "pub2", true, nil)
	routed(t, pub1, "q/probe1", rec2)
	routed(t, pub2, "q/probe2", rec1)

	const n = 50
	for i, pub := range []paho3.Client{pub1, pub2} {
		for j := range n {
			if tok := pub.Publish(fmt.Sprintf("q/from%d", i+1), 2, false, strconv.Itoa(j)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatal(tok.Error())
			}
		}
	}
	if tok := pub1.Publish("q/state", 1, true, "on"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	for i, r := range []*recorder{rec1, rec2} {
		waitFor(t, fmt.Sprintf("subscriber on node %d gets both nodes' messages", i+1), func() bool {
			return len(r.topic("q/from1")) >= n && len(r.topic("q/from2")) >= n && len(r.topic("q/state")) > 0
		})
		for _, topic := range []string{"q/from1", "q/from2"} {
			if got := r.topic(topic); !slices.Equal(got, seq(0, n)) {
				t.Errorf("subscriber on node %d got %s %v, want 0..%d once each in order", i+1, topic, got, n-1)
			}
		}
	}
	mu.Lock()
	for _, q := range qos2 {
		if q != 2 {
			t.Fatalf("a QoS 2 message came with QoS %d", q)
		}
	}
	mu.Unlock()

	// A subscriber that comes to node 2 later gets node 1's retained
	// message (node 2 stored it, retain flag and all).
	late := newRecorder()
	lc := mqttClient(t, nodes[1], "late", true, late)
	var retained atomic.Bool
	if tok := lc.Subscribe("q/state", 1, func(c paho3.Client, m paho3.Message) {
		retained.Store(m.Retained())
		late.handle(c, m)
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	waitFor(t, "the retained message on node 2", func() bool { return slices.Equal(late.topic("q/state"), []string{"on"}) })
	if !retained.Load() {
		t.Error("node 1's retained message came to a new subscriber on node 2 without the RETAIN flag")
	}
}

// Where a serving stream starts on a shard with watermarks [10, 20).
func TestMQTTClusterStartOffset(t *testing.T) {
	sm := mqtt.ShardMark{Name: "s", Low: 10, High: 20}
	for _, c := range []struct {
		name    string
		cursors map[string]uint64
		fresh   bool
		want    uint64
	}{
		{"a fresh puller gets new messages only", nil, true, 20},
		{"a shard new to a known puller is read whole", nil, false, 10},
		{"a cursor is kept", map[string]uint64{"s": 15}, false, 15},
		{"a cursor at the high watermark is kept", map[string]uint64{"s": 20}, true, 20},
		{"a cursor below the low watermark moves up", map[string]uint64{"s": 3}, false, 10},
		{"a cursor above the high watermark (records lost) restarts low", map[string]uint64{"s": 25}, false, 10},
	} {
		if got := startOffset(sm, c.cursors, c.fresh); got != c.want {
			t.Errorf("%s: start at %d, want %d", c.name, got, c.want)
		}
	}
}

// TestNodeMQTTClusterRouteAtSubscribe: a message published on node 1 as
// soon as a subscription on node 2 has its SUBACK reaches it, for each of
// ten new filters, once, though the new filter reaches node 1 only after
// that publish (node 1 reads again, for the new filter, from node 2's
// cursor when it subscribed). Before, the filters were polled every
// 250 ms and such a message was not forwarded. The messages of a filter
// node 2 had already come once each (the read again skips them).
func TestNodeMQTTClusterRouteAtSubscribe(t *testing.T) {
	_, nodes := startCluster(t, twoNodeConfigs)
	rec := newRecorder()
	sub := mqttClient(t, nodes[1], "sub", true, rec)
	pub := mqttClient(t, nodes[0], "pub", true, nil)
	subscribe(t, sub, "warm/#")
	routed(t, pub, "warm/probe", rec)
	const n = 10
	for i := range n {
		subscribe(t, sub, fmt.Sprintf("fresh/%d", i))
		publish(t, pub, fmt.Sprintf("fresh/%d", i), i, i+1)
		publish(t, pub, "warm/steady", i, i+1)
	}
	waitFor(t, "every message published right after its SUBACK", func() bool {
		for i := range n {
			if len(rec.topic(fmt.Sprintf("fresh/%d", i))) == 0 {
				return false
			}
		}
		return len(rec.topic("warm/steady")) >= n
	})
	time.Sleep(300 * time.Millisecond) // duplicates, if any, come now
	for i := range n {
		if got := rec.topic(fmt.Sprintf("fresh/%d", i)); !slices.Equal(got, []string{strconv.Itoa(i)}) {
			t.Errorf("fresh/%d: got %v, want [%d] once", i, got, i)
		}
	}
	if got := rec.topic("warm/steady"); !slices.Equal(got, seq(0, n)) {
		t.Errorf("warm/steady: got %v, want 0..%d once each in order", got, n-1)
	}
}

// retainedEntry is a node's retained entry of a topic, as its snapshot
// for a peer holds it (Server.RetainedSnapshot): an empty payload is a
// tombstone.
type retainedEntry struct {
	payload string
	millis  int64
	origin  string
}

// retainedOn returns node n's retained entries by topic.
func retainedOn(n *Node) map[string]retainedEntry {
	out := map[string]retainedEntry{}
	for _, r := range n.broker.mqtt.RetainedSnapshot() {
		out[string(r.Key)] = retainedEntry{payload: string(r.Value), millis: r.Timestamp, origin: recordOrigin(&r)}
	}
	return out
}

// retainedGot is what a new subscription on node n to filter gets: the
// messages (all retained, else the test fails) that arrive before a marker
// the subscriber publishes on marker right after its SUBACK (the retained
// messages are queued before the SUBACK is sent), by topic.
//
// The marker's payload is id: a marker an earlier call published on
// another node can reach this subscriber too (a new filter makes the peers
// read again from cursors up to a second old, so a message published there
// just before the SUBSCRIBE can come), and is not this call's. The paho
// handler neither closes done twice nor calls t (it may run after the test
// is over): a second close panicked in paho's router once.
func retainedGot(t *testing.T, n *Node, id, filter, marker string) map[string]string {
	t.Helper()
	var (
		mu         sync.Mutex
		got        = map[string]string{}
		unretained []string
		seen       bool // this call's marker came: what comes after does not count
	)
	done := make(chan struct{})
	c := mqttClient(t, n, id, true, nil)
	defer c.Disconnect(0)
	if tok := c.Subscribe(filter, 1, func(_ paho3.Client, m paho3.Message) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case seen:
		case m.Topic() == marker:
			if string(m.Payload()) == id {
				seen = true
				close(done)
			}
		case !m.Retained():
			unretained = append(unretained, fmt.Sprintf("%s=%q", m.Topic(), m.Payload()))
		default:
			got[m.Topic()] = string(m.Payload())
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	if tok := c.Publish(marker, 1, false, id); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%s: the marker did not come back", id)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(unretained) > 0 {
		t.Errorf("%s got %v without the RETAIN flag", id, unretained)
	}
	return got
}

func publishRetained(t *testing.T, c paho3.Client, topic, payload string) {
	t.Helper()
	if tok := c.Publish(topic, 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// TestNodeMQTTClusterRetained: the cluster keeps one retained set. A
// retained message published on node 1 before anyone subscribed anywhere
// reaches a later subscriber on node 3, and on node 2, which joins the
// cluster only afterwards (its first contact takes the peers' retained
// snapshots); a clear on node 1 reaches both; retained messages set on
// nodes 1 and 3 at the same time end with the same winner on every node,
// the one with the later (timestamp, node id); node 2 restarted after
// sets and a clear made while it was down has them.
func TestNodeMQTTClusterRetained(t *testing.T) {
	var late *config.Config
	_, nodes := startCluster(t, func(t testing.TB) []*config.Config {
		all := clusterConfigs(t)
		late = all[1]
		return []*config.Config{all[0], all[2]} // a quorum of the three voters
	})
	n1, n3 := nodes[0], nodes[1]
	pub1 := mqttClient(t, n1, "pub1", true, nil)
	pub3 := mqttClient(t, n3, "pub3", true, nil)
	publishRetained(t, pub1, "dev/1/state", "on")
	publishRetained(t, pub1, "dev/1/old", "x")
	publishRetained(t, pub3, "dev/3/state", "on3")
	want := map[string]string{"dev/1/state": "on", "dev/1/old": "x", "dev/3/state": "on3"}
	settled := func(n *Node, want map[string]string) func() bool {
		return func() bool {
			have := retainedOn(n)
			for topic, p := range want {
				if have[topic].payload != p {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, "node 3 has node 1's retained messages", settled(n3, want))
	if got := retainedGot(t, n3, "sub3", "dev/#", "dev/marker"); !reflect.DeepEqual(got, want) {
		t.Errorf("a new subscriber on node 3 got %v, want %v", got, want)
	}

	// Node 2 joins: no cursor of either peer, so each sends its snapshot.
	n2 := restartNode(t, late)
	waitFor(t, "node 2, joining later, has the retained messages", settled(n2, want))
	if got := retainedGot(t, n2, "sub2", "dev/#", "dev/marker"); !reflect.DeepEqual(got, want) {
		t.Errorf("a new subscriber on node 2 got %v, want %v", got, want)
	}
	if v := counterSum(t, n2, "quire_mqtt_cluster_retained_snapshot_entries_total", "1") +
		counterSum(t, n2, "quire_mqtt_cluster_retained_snapshot_entries_total", "3"); v != len(want) {
		t.Errorf("node 2 took %d entries of its peers' snapshots, want %d (each newer than what it had once)", v, len(want))
	}

	// A clear on node 1 reaches every node.
	publishRetained(t, pub1, "dev/1/old", "")
	delete(want, "dev/1/old")
	cleared := func(n *Node) func() bool {
		return func() bool { e, ok := retainedOn(n)["dev/1/old"]; return ok && e.payload == "" }
	}
	waitFor(t, "the clear reaches node 2", cleared(n2))
	waitFor(t, "the clear reaches node 3", cleared(n3))
	for i, n := range []*Node{n2, n3} {
		if got := retainedGot(t, n, fmt.Sprintf("after-clear%d", i), "dev/#", "dev/marker"); !reflect.DeepEqual(got, want) {
			t.Errorf("a new subscriber after the clear got %v, want %v", got, want)
		}
	}

	// Concurrent sets of the same topics on nodes 1 and 3.
	const rounds = 10
	var wg sync.WaitGroup
	for i, c := range []paho3.Client{pub1, pub3} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range rounds {
				if tok := c.Publish(fmt.Sprintf("conflict/%d", k), 1, true, fmt.Sprintf("from%d-%d", 2*i+1, k)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Error(tok.Error())
				}
			}
		}()
	}
	wg.Wait()
	all := []*Node{n1, n2, n3}
	agree := func() bool {
		first := retainedOn(all[0])
		for k := range rounds {
			topic := fmt.Sprintf("conflict/%d", k)
			for _, n := range all[1:] {
				if e, ok := retainedOn(n)[topic]; !ok || e != first[topic] {
					return false
				}
			}
		}
		return true
	}
	waitFor(t, "the three nodes agree on the concurrently set topics", agree)
	checkWinners(t, n2, retainedOn(n1), rounds)

	// Node 2 restarts after sets and a clear made while it was down.
	if err := n2.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	publishRetained(t, pub1, "dev/1/state", "off")
	publishRetained(t, pub3, "dev/3/state", "")
	want = map[string]string{"dev/1/state": "off"}
	n2 = restartNode(t, late)
	waitFor(t, "restarted node 2 has the sets and the clear made while it was down", func() bool {
		have := retainedOn(n2)
		return have["dev/1/state"].payload == "off" && have["dev/3/state"].payload == "" && have["dev/3/state"].millis != 0
	})
	if got := retainedGot(t, n2, "sub2b", "dev/#", "dev/marker"); !reflect.DeepEqual(got, want) {
		t.Errorf("a new subscriber on restarted node 2 got %v, want %v", got, want)
	}
	all[1] = n2
	waitFor(t, "the three nodes still agree after node 2's restart", agree)
}

// checkWinners checks that the entry of each conflict/<k> in have is, of
// the two sets node n stored (forwarded from nodes 1 and 3), the one with
// the later (timestamp, origin).
func checkWinners(t *testing.T, n *Node, have map[string]retainedEntry, rounds int) {
	t.Helper()
	best := map[string]retainedEntry{}
	eachStored(t, n, func(r *shard.Record) {
		if !strings.HasPrefix(string(r.Key), "conflict/") {
			return
		}
		c := retainedEntry{payload: string(r.Value), millis: r.Timestamp, origin: recordOrigin(r)}
		b, ok := best[string(r.Key)]
		if !ok || c.millis > b.millis || c.millis == b.millis && c.origin > b.origin {
			best[string(r.Key)] = c
		}
	})
	for k := range rounds {
		topic := fmt.Sprintf("conflict/%d", k)
		if w := best[topic]; w.payload == "" || have[topic] != w {
			t.Errorf("%s: every node holds %+v, want the later set %+v", topic, have[topic], w)
		}
	}
}
