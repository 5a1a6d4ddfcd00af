package node

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quiremq/quire/frontends/mqtt"
	"github.com/quiremq/quire/frontends/pubsub"
)

// sharedNodes returns the nodes that n's dispatch sends the messages
// published on n now to, for the shared subscription (group, filter).
func sharedNodes(n *Node, group, filter string) []uint64 {
	c := n.broker.cluster
	if c == nil {
		return nil
	}
	c.share.mu.RLock()
	defer c.share.mu.RUnlock()
	return c.share.candidates(pubsub.SharedKey{Group: group, Filter: filter})
}

// waitShared waits until every node of nodes sends group's messages to
// the nodes want.
func waitShared(t *testing.T, nodes []*Node, group, filter string, want []uint64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("every node sends $share/%s/%s to nodes %v", group, filter, want), func() bool {
		for _, n := range nodes {
			if !slices.Equal(sharedNodes(n, group, filter), want) {
				return false
			}
		}
		return true
	})
}

// member is a member of a shared subscription and what it received.
type member struct {
	name string
	c    paho3.Client
	rec  *recorder
}

// tally counts each payload of topics received by members (all of them
// together), and how many each member got.
func tally(members []*member, topics []string) (copies map[string]int, per map[string]int) {
	copies, per = map[string]int{}, map[string]int{}
	for _, m := range members {
		for _, topic := range topics {
			for _, p := range m.rec.topic(topic) {
				copies[topic+"="+p]++
				per[m.name]++
			}
		}
	}
	return copies, per
}

// checkOnce fails unless every payload "from".."to-1" of each topic was
// received exactly once by the members together.
func checkOnce(t *testing.T, what string, members []*member, topics []string, from, to int) {
	t.Helper()
	checkAtLeastOnce(t, what, members, topics, from, to)
	time.Sleep(500 * time.Millisecond) // second copies, if any, come now
	copies, _ := tally(members, topics)
	var bad []string
	for k, n := range copies {
		if n != 1 {
			bad = append(bad, fmt.Sprintf("%s ×%d", k, n))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("%s: messages not received exactly once across the group: %v", what, bad)
	}
}

// TestNodeMQTTClusterSharedOnce (MQTT 5.0 §4.8.2, shared subscriptions):
// three nodes with two members each of $share/g/jobs/#; QoS 1 messages
// published on every node reach exactly one member of the whole cluster
// each, and every member gets some. Once the members on one node leave
// (clean sessions: the group has no member there), the messages
// published on any node go to the other members, none lost, each once.
func TestNodeMQTTClusterSharedOnce(t *testing.T) {
	_, nodes := startCluster(t, clusterConfigs)
	var members []*member
	for i, n := range nodes {
		for j := range 2 {
			m := &member{name: fmt.Sprintf("m%d.%d", i+1, j), rec: newRecorder()}
			m.c = mqttClient(t, n, m.name, true, m.rec)
			subscribe(t, m.c, "$share/g/jobs/#")
			members = append(members, m)
		}
	}
	// A non-shared subscriber on node 1 gets every message, once.
	plain := newRecorder()
	subscribe(t, mqttClient(t, nodes[0], "plain", true, plain), "jobs/#")
	pubs := make([]paho3.Client, len(nodes))
	topics := make([]string, len(nodes))
	for i, n := range nodes {
		pubs[i] = mqttClient(t, n, fmt.Sprintf("pub%d", i+1), true, nil)
		topics[i] = fmt.Sprintf("jobs/%d", i+1)
	}
	waitShared(t, nodes, "g", "jobs/#", []uint64{1, 2, 3})

	const n = 30
	for i, p := range pubs {
		publish(t, p, topics[i], 0, n)
	}
	checkOnce(t, "three nodes with members", members, topics, 0, n)
	_, per := tally(members, topics)
	for _, m := range members {
		if per[m.name] == 0 {
			t.Errorf("member %s got none of the %d messages (per member: %v)", m.name, 3*n, per)
		}
	}

	// The members on node 3 leave: their sessions end, and node 3 has no
	// member of the group left.
	for _, m := range members[4:] {
		m.c.Disconnect(250)
	}
	waitShared(t, nodes, "g", "jobs/#", []uint64{1, 2})
	for i, p := range pubs {
		publish(t, p, topics[i], n, 2*n)
	}
	checkOnce(t, "the members on node 3 left", members[:4], topics, n, 2*n)
	waitFor(t, "the non-shared subscriber gets every message", func() bool {
		for _, topic := range topics {
			if len(plain.topic(topic)) < 2*n {
				return false
			}
		}
		return true
	})
	for _, topic := range topics {
		if got := plain.topic(topic); !slices.Equal(got, seq(0, 2*n)) {
			t.Errorf("the non-shared subscriber got %s %v, want 0..%d once each in order", topic, got, 2*n-1)
		}
	}
}

// takers returns, for each offset of shard "s" in [from, to), the nodes
// of ids whose Takes answers true for (g, f).
func takers(d *shareDispatch, ids []uint64, from, to uint64) [][]uint64 {
	out := make([][]uint64, 0, to-from)
	for off := from; off < to; off++ {
		var got []uint64
		for _, id := range ids {
			if d.Takes("g", "f", mqtt.Position{Shard: "s", Offset: off}, id) {
				got = append(got, id)
			}
		}
		out = append(out, got)
	}
	return out
}

// TestShareDispatch: one node per message while membership is stable,
// spread evenly; an answer never changes once given (a membership change
// applies from the shards' high watermarks on); what is older than the
// history goes to every node with a member; nodes with an online member
// that are reachable are chosen first, then reachable ones, then any.
func TestShareDispatch(t *testing.T) {
	high := uint64(10)
	d := newShareDispatch(1, func() []mqtt.ShardMark { return []mqtt.ShardMark{{Name: "s", High: high}} }, nil)
	g := []mqtt.SharedRoute{{Group: "g", Filter: "f", Online: true}}
	d.setGroups(1, g, true)
	d.streamOpened(2, g)
	d.streamOpened(3, g)
	ids := []uint64{1, 2, 3}
	stable := takers(d, ids, 10, 40)
	count := map[uint64]int{}
	for i, got := range stable {
		if len(got) != 1 {
			t.Fatalf("offset %d: taken by %v, want one node", 10+i, got)
		}
		count[got[0]]++
	}
	if count[1] != 10 || count[2] != 10 || count[3] != 10 {
		t.Errorf("30 messages over three nodes: %v, want 10 each", count)
	}
	// Older than the history (before the first epoch): every member node.
	for i, got := range takers(d, ids, 0, 10) {
		if !slices.Equal(got, ids) {
			t.Errorf("offset %d, before the history: taken by %v, want %v", i, got, ids)
		}
	}

	// Node 3's members leave when the shard is at 40.
	high = 40
	d.streamGroups(3, nil)
	if got := takers(d, ids, 10, 40); !reflect.DeepEqual(got, stable) {
		t.Errorf("answers for offsets 10..39 changed with membership: %v, were %v", got, stable)
	}
	for i, got := range takers(d, ids, 40, 60) {
		if len(got) != 1 || got[0] == 3 {
			t.Errorf("offset %d after node 3 left: taken by %v, want one of 1, 2", 40+i, got)
		}
	}

	// Tiers: node 2's stream closes (unreachable): node 1 only.
	high = 60
	d.streamClosed(2)
	if got := d.candidatesExcept(pubsub.SharedKey{Group: "g", Filter: "f"}, nil); !slices.Equal(got, []uint64{1}) {
		t.Errorf("node 2 unreachable: candidates %v, want [1]", got)
	}
	// Node 1's member goes offline, reachable still: node 1.
	d.setGroups(1, []mqtt.SharedRoute{{Group: "g", Filter: "f"}}, true)
	if got := d.candidatesExcept(pubsub.SharedKey{Group: "g", Filter: "f"}, nil); !slices.Equal(got, []uint64{1}) {
		t.Errorf("node 1's member offline, node 2 unreachable: candidates %v, want [1]", got)
	}
	// Node 1 has none: node 2, unreachable, gets them when it pulls.
	high = 70
	d.setGroups(1, nil, true)
	for i, got := range takers(d, ids, 70, 75) {
		if !slices.Equal(got, []uint64{2}) {
			t.Errorf("offset %d, the only member on unreachable node 2: taken by %v", 70+i, got)
		}
	}
	// Meta's routes do not replace what a stream said while one is open.
	d.streamOpened(3, nil)
	d.setGroups(3, g, false)
	if got := d.candidatesExcept(pubsub.SharedKey{Group: "g", Filter: "f"}, nil); !slices.Equal(got, []uint64{2}) {
		t.Errorf("node 3's stream says no member, meta says one: candidates %v, want [2]", got)
	}
	// Node 2 leaves the cluster: no member anywhere, nobody takes them;
	// a member that comes later takes what was stored meanwhile.
	high = 80
	d.forgetExcept(map[uint64]bool{1: true, 3: true})
	for i, got := range takers(d, ids, 80, 85) {
		if len(got) != 0 {
			t.Errorf("offset %d, no member: taken by %v", 80+i, got)
		}
	}
	d.streamGroups(3, g)
	for i, got := range takers(d, ids, 80, 85) {
		if !slices.Equal(got, []uint64{3}) {
			t.Errorf("offset %d, stored while no node had a member, node 3 has one now: taken by %v", 80+i, got)
		}
	}
}

// publishing publishes "from".."to-1" on topic through c in the
// background, signalling at (closing the channel) once "at" is published;
// wait returns the error.
func publishing(c paho3.Client, topic string, from, at, to int) (reached <-chan struct{}, wait func() error) {
	ch := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		err := publishQoS1(c, topic, from, at)
		close(ch)
		if err == nil {
			err = publishQoS1(c, topic, at, to)
		}
		errc <- err
	}()
	return ch, func() error { return <-errc }
}

// checkAtLeastOnce fails unless every payload "from".."to-1" of each topic
// reaches the members (together) at least once.
func checkAtLeastOnce(t *testing.T, what string, members []*member, topics []string, from, to int) {
	t.Helper()
	missing := func() []string {
		copies, _ := tally(members, topics)
		var out []string
		for _, topic := range topics {
			for i := from; i < to; i++ {
				if copies[fmt.Sprintf("%s=%d", topic, i)] == 0 {
					out = append(out, fmt.Sprintf("%s=%d", topic, i))
				}
			}
		}
		return out
	}
	for deadline := time.Now().Add(time.Minute); len(missing()) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: after a minute, messages no member got: %v", what, missing())
		}
	}
}

// TestNodeMQTTClusterSharedChanges: while messages are published, the
// members of $share/g/jobs/# on one node leave (clean sessions), and then
// a node whose member is a persistent session stops and comes back. No
// message is lost for the group: each reaches a member at least once
// (what the node that lost its members was chosen for goes to another
// one; what the stopped node was chosen for reaches its persistent member
// when both are back).
func TestNodeMQTTClusterSharedChanges(t *testing.T) {
	cfgs, nodes := startCluster(t, clusterConfigs)
	join := func(node int, name string, clean bool) *member {
		m := &member{name: name, rec: newRecorder()}
		m.c = mqttClient(t, nodes[node], name, clean, m.rec)
		subscribe(t, m.c, "$share/g/jobs/#")
		return m
	}
	a := join(0, "a", true)
	b := join(1, "b", false) // persistent
	c0, c1 := join(2, "c0", true), join(2, "c1", true)
	pub1 := mqttClient(t, nodes[0], "pub1", true, nil)
	pub2 := mqttClient(t, nodes[1], "pub2", true, nil)
	pub3 := mqttClient(t, nodes[2], "pub3", true, nil)
	waitShared(t, nodes, "g", "jobs/#", []uint64{1, 2, 3})

	// Node 3's members leave while nodes 1, 2 and 3 publish.
	const n = 150
	at1, wait1 := publishing(pub1, "jobs/1", 0, n/3, n)
	_, wait2 := publishing(pub2, "jobs/2", 0, n/3, n)
	_, wait3 := publishing(pub3, "jobs/3", 0, n/3, n)
	<-at1
	c0.c.Disconnect(0)
	c1.c.Disconnect(0)
	for _, wait := range []func() error{wait1, wait2, wait3} {
		if err := wait(); err != nil {
			t.Fatal(err)
		}
	}
	all := []*member{a, b, c0, c1}
	checkAtLeastOnce(t, "node 3's members left while messages were published", all, []string{"jobs/1", "jobs/2", "jobs/3"}, 0, n)
	waitShared(t, nodes, "g", "jobs/#", []uint64{1, 2})

	// Node 2, whose member is a persistent session, stops while nodes 1
	// and 3 publish, and comes back; so does its member.
	at1, wait1 = publishing(pub1, "jobs/1", n, n+n/3, 2*n)
	_, wait3 = publishing(pub3, "jobs/3", n, n+n/3, 2*n)
	<-at1
	b.c.Disconnect(0)
	if err := nodes[1].Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, wait := range []func() error{wait1, wait3} {
		if err := wait(); err != nil {
			t.Fatal(err)
		}
	}
	nodes[1] = restartNode(t, cfgs[1])
	b2 := &member{name: "b (back)", rec: newRecorder()}
	b2.c = mqttClient(t, nodes[1], "b", false, b2.rec)
	checkAtLeastOnce(t, "node 2 stopped and came back while messages were published", append(all, b2), []string{"jobs/1", "jobs/3"}, n, 2*n)
	copies, per := tally(append(all, b2), []string{"jobs/1", "jobs/2", "jobs/3"})
	dups := 0
	for _, c := range copies {
		dups += c - 1
	}
	redirected := 0
	for _, nd := range nodes {
		redirected += int(testutil.ToFloat64(nd.broker.cluster.m.redirected))
	}
	t.Logf("per member: %v; messages that came twice or more: %d; sent to another node than first chosen: %d", per, dups, redirected)
}

// TestNodeMQTTClusterSharedFirstMember: the first member of a group in the
// cluster gets the messages published right after its SUBACK, on its own
// node and on another (before its node's routes reached it: the other
// node reads them again for the group when they do).
func TestNodeMQTTClusterSharedFirstMember(t *testing.T) {
	_, nodes := startCluster(t, twoNodeConfigs)
	pub1 := mqttClient(t, nodes[0], "pub1", true, nil)
	pub2 := mqttClient(t, nodes[1], "pub2", true, nil)
	// Node 1 pulls from node 2 already (a first contact starts with the
	// messages that come after it, see frontends/mqtt/cluster.go).
	warm := newRecorder()
	subscribe(t, mqttClient(t, nodes[0], "warm", true, warm), "warm/#")
	routed(t, pub2, "warm/probe", warm)
	const n = 20
	for round := range 3 {
		m := &member{name: fmt.Sprintf("first%d", round), rec: newRecorder()}
		m.c = mqttClient(t, nodes[0], m.name, true, m.rec)
		filter := fmt.Sprintf("first/%d", round)
		subscribe(t, m.c, "$share/h/"+filter+"/#")
		publish(t, pub1, filter+"/1", 0, n)
		publish(t, pub2, filter+"/2", 0, n)
		checkOnce(t, fmt.Sprintf("round %d", round), []*member{m}, []string{filter + "/1", filter + "/2"}, 0, n)
	}
}

// twoNodesOneMember starts two nodes with one member, "m", of
// $share/g/filter on nodes[at], and waits until both nodes know it.
func twoNodesOneMember(t *testing.T, at int, filter string) ([]*Node, *member) {
	t.Helper()
	_, nodes := startCluster(t, twoNodeConfigs)
	m := &member{name: "m", rec: newRecorder()}
	m.c = mqttClient(t, nodes[at], "m", true, m.rec)
	subscribe(t, m.c, "$share/g/"+filter)
	waitShared(t, nodes, "g", filter, []uint64{uint64(at + 1)})
	return nodes, m
}

// TestNodeMQTTClusterSharedReplayJoined: the messages stored while this
// node's dispatch did not know yet of its first member of a group (its
// routes follow the tree a moment later) went to no node; they reach the
// member when they are read again for the group (replayJoined).
func TestNodeMQTTClusterSharedReplayJoined(t *testing.T) {
	nodes, m := twoNodesOneMember(t, 0, "late/#")
	c := nodes[0].broker.cluster
	// The dispatch as it was before the subscription reached it.
	c.share.setGroups(c.self, nil, true)
	since := highs(c.src.Shards())
	pub := mqttClient(t, nodes[0], "pub", true, nil)
	const n = 10
	publish(t, pub, "late/1", 0, n)
	time.Sleep(300 * time.Millisecond)
	if got := m.rec.topic("late/1"); len(got) != 0 {
		t.Fatalf("the member got %v while the dispatch gave its node nothing", got)
	}
	c.fmu.Lock()
	groups := c.groups
	c.fmu.Unlock()
	c.share.setGroups(c.self, groups, true)
	c.replayJoined(since, groups)
	checkOnce(t, "read again for the group", []*member{m}, []string{"late/1"}, 0, n)
}

// TestNodeMQTTClusterSharedLocalOrphan: a message published on a node
// whose dispatch still gives it a group that has no member there any more
// (its last member left a moment ago, before the node's routes changed)
// goes to another node's member.
func TestNodeMQTTClusterSharedLocalOrphan(t *testing.T) {
	nodes, m := twoNodesOneMember(t, 1, "gone/#")
	// Node 1's dispatch as it was while its own member had just left.
	c := nodes[0].broker.cluster
	c.share.setGroups(c.self, []mqtt.SharedRoute{{Group: "g", Filter: "gone/#", Online: true}}, true)
	if got := sharedNodes(nodes[0], "g", "gone/#"); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("node 1's dispatch gives the group to %v, want [1 2]", got)
	}
	pub := mqttClient(t, nodes[0], "pub", true, nil)
	const n = 20
	publish(t, pub, "gone/1", 0, n)
	checkOnce(t, "published on a node chosen without a member", []*member{m}, []string{"gone/1"}, 0, n)
	if r := testutil.ToFloat64(c.m.redirected); r == 0 {
		t.Errorf("no message went to another node than first chosen (shared_redirected_total 0)")
	}
}
