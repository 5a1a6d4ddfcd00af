package node

import (
	"context"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/engines/file"
	"github.com/quiremq/quire/shard"
)

// TestNodeServesMQTT: `quire start` serves MQTT on its configured tcp and ws
// listeners; a QoS 1 publish is acknowledged, delivered to a subscriber, and
// stored in a shard of the engine its topic's rule picks (here the file
// engine), where it is still after the node stops.
func TestNodeServesMQTT(t *testing.T) {
	dir := t.TempDir()
	n := startNode(t, testConfig(dir), nil)
	for _, name := range []string{"tcp", "ws"} {
		if n.MQTTAddr(name) == nil {
			t.Fatalf("MQTT listener %s is not served", name)
		}
	}
	if n.MQTTAddr("tls") != nil {
		t.Fatal("MQTT tls listener served without a certificate")
	}
	connect := func(url, id string) paho3.Client {
		c := paho3.NewClient(paho3.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
			SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
		if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s to %s: %v", id, url, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(50) })
		return c
	}
	got := make(chan string, 4)
	sub := connect("ws://"+n.MQTTAddr("ws").String()+"/mqtt", "sub")
	if tok := sub.Subscribe("orders/#", 1, func(_ paho3.Client, m paho3.Message) { got <- m.Topic() + "=" + string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub := connect("tcp://"+n.MQTTAddr("tcp").String(), "pub")
	if tok := pub.Publish("orders/eu", 1, false, "order-1"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case m := <-got:
		if m != "orders/eu=order-1" {
			t.Fatalf("subscriber got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("subscriber got nothing")
	}
	if err := n.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}

	// The message is in a file-engine shard under data_dir.
	e, err := file.Open(file.Options{Dir: n.DataDir() + "/file"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	names, err := e.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, name := range names {
		s, err := e.Open(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := s.Read(ctx, 0, shard.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if string(r.Key) == "orders/eu" && string(r.Value) == "order-1" {
				found = true
			}
		}
	}
	if !found {
		t.Fatalf("the published message is in none of the file engine's shards %v", names)
	}
}
