package load_test

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// faultyProxy forwards connections to a broker and tampers with the
// PUBLISH packets the broker sends to its clients: every dropEvery-th is
// dropped, every dupEvery-th sent twice (0: never). It counts what it did.
type faultyProxy struct {
	broker              string
	dropEvery, dupEvery int

	mu               sync.Mutex
	n                int
	dropped, doubled int
}

func (p *faultyProxy) start(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", p.broker)
			if err != nil {
				c.Close()
				continue
			}
			wg.Go(func() { io.Copy(b, c); b.Close() })
			wg.Go(func() { p.tamper(c, b); c.Close() })
		}
	})
	return l.Addr().String()
}

// tamper copies broker packets to the client (MQTT 3.1.1).
func (p *faultyProxy) tamper(client io.Writer, broker io.Reader) {
	r := packet.NewReader(broker, 0)
	r.SetVersion(packet.V311)
	w := packet.NewWriter(client, packet.V311)
	for {
		pk, err := r.ReadPacket()
		if err != nil {
			return
		}
		copies := 1
		if _, ok := pk.(*packet.Publish); ok {
			p.mu.Lock()
			p.n++
			switch {
			case p.dropEvery > 0 && p.n%p.dropEvery == 0:
				copies = 0
				p.dropped++
			case p.dupEvery > 0 && p.n%p.dupEvery == 0:
				copies = 2
				p.doubled++
			}
			p.mu.Unlock()
		}
		for range copies {
			if err := w.WritePacket(pk); err != nil {
				return
			}
		}
		if err := w.Flush(); err != nil {
			return
		}
	}
}

func (p *faultyProxy) counts() (dropped, doubled int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropped, p.doubled
}
