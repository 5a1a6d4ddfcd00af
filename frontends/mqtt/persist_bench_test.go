package mqtt

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// BenchmarkPublishQoS1Stored measures QoS 1 publish → deliver → PUBACK
// through the broker on the memory engine, to a subscriber whose session
// is in memory only (no Store) and to one whose session is stored (Store,
// Session Expiry 1 h): the stored session's bookkeeping (owed positions,
// frontiers, cursor batches) must not slow the publish path.
//
//	go test -run '^$' -bench PublishQoS1Stored -benchtime 20000x ./frontends/mqtt/
func BenchmarkPublishQoS1Stored(b *testing.B) {
	for _, stored := range []bool{false, true} {
		b.Run(fmt.Sprintf("stored=%v", stored), func(b *testing.B) {
			n := memNode()
			var tcp string
			var stop func()
			if stored {
				pb := n.start(b, true, nil)
				tcp, stop = pb.tcp, func() { pb.stop(b) }
			} else {
				tb := startBroker(b, nil, nil)
				tcp, stop = tb.tcp, func() {}
			}
			defer stop()
			sub := benchConn(b, tcp, "sub", stored)
			sub.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: "bench/#", QoS: packet.QoS1}}})
			sub.read()
			pub := benchConn(b, tcp, "pub", false)
			done := make(chan struct{})
			go func() { // the subscriber acknowledges everything
				defer close(done)
				for range b.N {
					p, err := sub.r.ReadPacket()
					if err != nil {
						return
					}
					if pp, ok := p.(*packet.Publish); ok {
						sub.w.WritePacket(&packet.Puback{PacketID: pp.PacketID})
						sub.w.Flush()
					}
				}
			}()
			payload := make([]byte, 64)
			tokens := make(chan struct{}, 64) // at most 64 unacknowledged
			acks := make(chan error, 1)
			go func() {
				for range b.N {
					if _, err := pub.r.ReadPacket(); err != nil {
						acks <- err
						return
					}
					<-tokens
				}
				acks <- nil
			}()
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				select {
				case tokens <- struct{}{}:
				default:
					pub.w.Flush() // window full: send what is buffered, then wait
					tokens <- struct{}{}
				}
				pub.w.WritePacket(&packet.Publish{Topic: fmt.Sprintf("bench/%d", i%16), QoS: packet.QoS1,
					PacketID: uint16(i%60000 + 1), Payload: payload})
			}
			pub.w.Flush()
			if err := <-acks; err != nil {
				b.Fatal(err)
			}
			<-done
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

func benchConn(b *testing.B, addr, id string, persistent bool) *rawClient {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	c := &rawClient{t: b, nc: nc, r: packet.NewReader(nc, 1<<20), w: packet.NewWriter(nc, packet.V5)}
	c.r.SetVersion(packet.V5)
	cp := &packet.Connect{Version: packet.V5, ClientID: id, CleanStart: true}
	if persistent {
		cp.Properties.SessionExpiryInterval = 3600
	}
	c.send(cp)
	c.read()
	return c
}
