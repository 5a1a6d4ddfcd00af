package node

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/internal/config"
)

// benchCluster starts a three-node cluster (clusterConfigs) for a
// benchmark, with queues long enough that a burst may queue up entirely:
// throughput is measured, not the drop policy.
func benchCluster(b *testing.B) []*Node {
	b.Helper()
	_, nodes := startCluster(b, func(tb testing.TB) []*config.Config {
		cfgs := clusterConfigs(tb)
		for _, c := range cfgs {
			c.MQTT.MaxQueued = 1 << 20
		}
		return cfgs
	})
	return nodes
}

// BenchmarkMQTTClusterDelivery publishes b.N QoS 1 messages (128 B) on
// node 1, up to 256 unacknowledged, to a QoS 1 subscriber on node 1
// (local) or on node 2 (cross-node: stored on node 1, pulled and stored
// by node 2, delivered there), and reports messages per second end to end.
//
//	go test -run '^$' -bench MQTTClusterDelivery -benchtime 5000x ./internal/node
func BenchmarkMQTTClusterDelivery(b *testing.B) {
	nodes := benchCluster(b)
	client := func(n *Node, id string, h paho3.MessageHandler) paho3.Client {
		c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + n.MQTTAddr("tcp").String()).SetClientID(id).
			SetProtocolVersion(4).SetAutoReconnect(false).SetDefaultPublishHandler(h).SetMaxResumePubInFlight(256))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.Fatalf("connect %s: %v", id, tok.Error())
		}
		b.Cleanup(func() { c.Disconnect(50) })
		return c
	}
	pub := client(nodes[0], "bench-pub", nil)
	payload := make([]byte, 128)
	for _, bc := range []struct {
		name string
		sub  *Node
	}{{"local", nodes[0]}, {"cross-node", nodes[1]}} {
		b.Run(bc.name, func(b *testing.B) {
			topic := "bench/" + bc.name
			var got atomic.Int64
			sub := client(bc.sub, "bench-sub-"+bc.name, func(paho3.Client, paho3.Message) { got.Add(1) })
			if tok := sub.Subscribe(topic, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
			// Until the route reached node 1.
			for got.Load() == 0 {
				pub.Publish(topic, 1, false, payload).WaitTimeout(10 * time.Second)
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
			base := got.Load()
			b.ResetTimer()
			window := make(chan paho3.Token, 256)
			done := make(chan error, 1)
			go func() {
				for tok := range window {
					if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
						done <- fmt.Errorf("publish: %v", tok.Error())
						return
					}
				}
				done <- nil
			}()
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				window <- pub.Publish(topic, 1, false, payload)
			}
			close(window)
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			for deadline := time.Now().Add(time.Minute); got.Load()-base < int64(b.N); {
				if time.Now().After(deadline) {
					b.Fatalf("%d of %d delivered; quire_mqtt_messages_dropped_total on the subscriber's node: %v", got.Load()-base, b.N, dropped(b, bc.sub))
				}
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "msgs/s")
		})
	}
}

// dropped is quire_mqtt_messages_dropped_total of n by reason.
func dropped(b *testing.B, n *Node) map[string]float64 {
	mfs, err := n.reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "quire_mqtt_messages_dropped_total" {
			for _, m := range mf.GetMetric() {
				out[m.GetLabel()[0].GetValue()] += m.GetCounter().GetValue()
			}
		}
	}
	return out
}
