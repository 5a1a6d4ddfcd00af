package mqtt

import (
	"testing"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// BenchmarkDeliverIdle is the latency of one delivery to an idle
// subscriber: a publisher sends a PUBLISH and waits until the subscriber
// has read it, one message every 300 µs (sendDirect's case), over TCP.
// Metric µs/delivery is one trip publisher → broker → subscriber, clients
// included; direct/delivery is the share conn.sendDirect wrote. QoS 1 is
// acknowledged both ways, outside the trip.
func BenchmarkDeliverIdle(b *testing.B) {
	for _, qos := range []packet.QoS{packet.QoS0, packet.QoS1} {
		b.Run("qos"+string(rune('0'+qos)), func(b *testing.B) {
			br := startBroker(b, nil, nil)
			sub := rawOn(b, dial(b, br.tcp))
			sub.connect(&packet.Connect{Version: packet.V5, ClientID: "sub", CleanStart: true, KeepAlive: 60})
			sub.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "idle", QoS: qos}}})
			if _, ok := sub.read().(*packet.Suback); !ok {
				b.Fatal("no SUBACK")
			}
			pub := rawOn(b, dial(b, br.tcp))
			pub.connect(&packet.Connect{Version: packet.V5, ClientID: "pub", CleanStart: true, KeepAlive: 60})
			payload := make([]byte, 1024)
			var trips time.Duration
			b.ResetTimer()
			for i := range b.N {
				var id uint16
				if qos > 0 {
					id = uint16(i%60000 + 1)
				}
				time.Sleep(300 * time.Microsecond)
				t0 := time.Now()
				pub.send(&packet.Publish{Topic: "idle", QoS: qos, PacketID: id, Payload: payload})
				m, ok := sub.read().(*packet.Publish)
				trips += time.Since(t0)
				if !ok {
					b.Fatal("not a PUBLISH")
				}
				if qos == packet.QoS1 {
					sub.send(&packet.Puback{PacketID: m.PacketID})
					if _, ok := pub.read().(*packet.Puback); !ok {
						b.Fatal("no PUBACK")
					}
				}
			}
			b.ReportMetric(float64(trips.Microseconds())/float64(b.N), "µs/delivery")
			br.mu.Lock()
			sess := br.sessions["sub"]
			br.mu.Unlock()
			b.ReportMetric(float64(sess.owner().directSent.Load())/float64(b.N), "direct/delivery")
		})
	}
}
