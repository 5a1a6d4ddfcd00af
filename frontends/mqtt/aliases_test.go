package mqtt

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// aliasReceipt is one PUBLISH as a paho.golang client saw it: the topic
// its StandardRouter resolved, and the wire's topic and alias.
type aliasReceipt struct {
	resolved, wire string
	alias          uint16
	payload        string
}

// aliasClient connects a paho.golang v5 client with the given Topic Alias
// Maximum whose StandardRouter (the client's alias support) resolves every
// PUBLISH to one of topics.
func aliasClient(t *testing.T, addr, id string, aliasMax uint16, topics []string) (*paho.Client, chan aliasReceipt) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan aliasReceipt, 100)
	router := paho.NewStandardRouter()
	for _, topic := range topics {
		router.RegisterHandler(topic, func(p *paho.Publish) {
			r := aliasReceipt{resolved: topic, wire: p.Topic, payload: string(p.Payload)}
			if p.Properties != nil && p.Properties.TopicAlias != nil {
				r.alias = *p.Properties.TopicAlias
			}
			got <- r
		})
	}
	c := paho.NewClient(paho.ClientConfig{Conn: nc, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			router.Route(pr.Packet.Packet())
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}
	if aliasMax > 0 {
		cp.Properties = &paho.ConnectProperties{TopicAliasMaximum: paho.Uint16(aliasMax)}
	}
	if _, err := c.Connect(ctx, cp); err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	if _, err := c.Subscribe(ctx5(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "alias/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	return c, got
}

// TestOutboundTopicAliases: a paho.golang client with Topic Alias Maximum
// 2 gets PUBLISHes with aliases 1 and 2 only, the topic sent once per
// (re)assignment and then left empty, and its router resolves every one
// to the topic published; a third topic re-maps the first assigned alias.
// A client without a Topic Alias Maximum gets no alias.
func TestOutboundTopicAliases(t *testing.T) {
	b := startBroker(t, nil, nil)
	topics := []string{"alias/a/long/topic/name", "alias/b/long/topic/name", "alias/c/long/topic/name"}
	_, got := aliasClient(t, b.tcp, "aliased", 2, topics)
	_, plainGot := aliasClient(t, b.tcp, "plain", 0, topics)
	pub := connect5(t, b.tcp, &paho.Connect{ClientID: "pub", CleanStart: true})
	// a, b take aliases 1 and 2; c replaces a's (1); a replaces b's (2).
	seq := []int{0, 1, 0, 1, 1, 2, 2, 0, 2}
	want := []struct {
		alias uint16
		wire  bool // topic on the wire
	}{{1, true}, {2, true}, {1, false}, {2, false}, {2, false}, {1, true}, {1, false}, {2, true}, {1, false}}
	for i, k := range seq {
		publish5(t, pub, topics[k], 1, false, string(rune('0'+i)))
	}
	for i, k := range seq {
		var r aliasReceipt
		select {
		case r = <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d not received", i)
		}
		if r.resolved != topics[k] || r.payload != string(rune('0'+i)) {
			t.Fatalf("message %d resolved to %s %q, want %s", i, r.resolved, r.payload, topics[k])
		}
		if r.alias != want[i].alias || (r.wire != "") != want[i].wire {
			t.Fatalf("message %d: alias %d wire topic %q, want alias %d with topic %v", i, r.alias, r.wire, want[i].alias, want[i].wire)
		}
		if want[i].wire && r.wire != topics[k] {
			t.Fatalf("message %d: wire topic %q, want %q", i, r.wire, topics[k])
		}
	}
	for i, k := range seq {
		select {
		case r := <-plainGot:
			if r.alias != 0 || r.wire != topics[k] {
				t.Fatalf("client without Topic Alias Maximum got alias %d topic %q", r.alias, r.wire)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d not received without aliases", i)
		}
	}
}
