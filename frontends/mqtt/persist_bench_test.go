package mqtt

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// BenchmarkPublishQoS1Stored measures QoS 1 publish → PUBACK through the
// broker on the memory engine, without a Store and with one (frontier
// bookkeeping on every publish), with no subscriber (the publish path
// alone) and with a subscriber acknowledging everything whose session is
// in memory only (no Store) or stored (Store, Session Expiry 1 h: owed
// positions, cursor batches). Storing sessions must not slow the publish
// path. The shared variants subscribe through "$share/g/…" (positions owed
// to the group, shared.go).
//
//	go test -run '^$' -bench PublishQoS1Stored -benchtime 20000x ./frontends/mqtt/
func BenchmarkPublishQoS1Stored(b *testing.B) {
	for _, withSub := range []bool{false, true} {
		for _, stored := range []bool{false, true} {
			b.Run(fmt.Sprintf("subscriber=%v/stored=%v", withSub, stored), func(b *testing.B) {
				benchPublish(b, withSub, stored, "bench/#")
			})
		}
	}
	for _, stored := range []bool{false, true} {
		b.Run(fmt.Sprintf("shared/stored=%v", stored), func(b *testing.B) {
			benchPublish(b, true, stored, "$share/g/bench/#")
		})
	}
}

func benchPublish(b *testing.B, withSub, stored bool, filter string) {
	// Nothing may be dropped: the subscriber counts every message.
	tweak := func(o *Options) { o.MaxQueued = b.N + 1 }
	var tcp string
	if stored {
		tcp = memNode().start(b, true, tweak).tcp
	} else {
		tcp = startBroker(b, nil, tweak).tcp
	}
	pub := benchConn(b, tcp, "pub", false)
	done := make(chan struct{})
	if withSub {
		sub := benchConn(b, tcp, "sub", stored)
		sub.send(&packet.Subscribe{PacketID: 1, Subscriptions: []packet.Subscription{{Filter: filter, QoS: packet.QoS1}}})
		sub.read()
		sub.nc.SetReadDeadline(time.Time{})
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
	} else {
		close(done)
	}
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
	nc.SetReadDeadline(time.Time{})
	return c
}
