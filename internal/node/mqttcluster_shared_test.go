package node

import (
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

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
	want := len(topics) * (to - from)
	waitFor(t, fmt.Sprintf("%s: the members get all %d messages", what, want), func() bool {
		copies, _ := tally(members, topics)
		got := 0
		for _, topic := range topics {
			for i := from; i < to; i++ {
				if copies[fmt.Sprintf("%s=%d", topic, i)] > 0 {
					got++
				}
			}
		}
		return got == want
	})
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
