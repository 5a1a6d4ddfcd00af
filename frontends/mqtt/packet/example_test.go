package packet_test

import (
	"bytes"
	"fmt"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// A server reads CONNECT (which sets the version), answers, and then reads
// the client's packets; a bad packet yields the reason code to send.
func Example() {
	// What a v5 client sends: CONNECT, a QoS 1 PUBLISH, then a PUBLISH
	// whose topic name holds a wildcard.
	var in []byte
	in, _ = (&packet.Connect{Version: packet.V5, CleanStart: true, ClientID: "dev-1"}).Append(in, packet.V5)
	in, _ = (&packet.Publish{QoS: packet.QoS1, PacketID: 1, Topic: "t/1", Payload: []byte("hi")}).Append(in, packet.V5)
	in = append(in, 0x30, 0x04, 0x00, 0x01, '#', 0x00)

	var out bytes.Buffer
	r := packet.NewReader(bytes.NewReader(in), 1<<20)
	w := packet.NewWriter(&out, 0)
	for {
		p, err := r.ReadPacket()
		if err != nil {
			code := packet.ReasonCodeOf(err)
			fmt.Printf("closing: %v (0x%02X)\n", code, byte(code))
			w.WritePacket(&packet.Disconnect{ReasonCode: code})
			break
		}
		switch p := p.(type) {
		case *packet.Connect:
			fmt.Println("CONNECT", p.ClientID, "version", p.Version)
			w.SetVersion(p.Version)
			w.WritePacket(&packet.Connack{})
		case *packet.Publish:
			fmt.Printf("PUBLISH %s %q\n", p.Topic, p.Payload)
			w.WritePacket(&packet.Puback{PacketID: p.PacketID})
		}
	}
	w.Flush()
	fmt.Printf("% x\n", out.Bytes())
	// Output:
	// CONNECT dev-1 version 5.0
	// PUBLISH t/1 "hi"
	// closing: Topic Name invalid (0x90)
	// 20 03 00 00 00 40 02 00 01 e0 01 90
}
