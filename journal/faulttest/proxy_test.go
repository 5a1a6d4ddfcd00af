package faulttest

import (
	"net"
	"sync"
	"testing"
)

// proxy forwards TCP connections from its own loopback address to a
// bookie's, so that the test can cut the network between the writer and
// that bookie without touching either process:
//
//   - blackhole: bytes stop flowing both ways and new connections are
//     accepted but never forwarded — packets dropped, as in a partition;
//     the peers see silence, never an error. heal lets the held bytes
//     through again (TCP would retransmit them).
//   - reset: every connection is closed and new ones are closed at once
//     until heal — the peer answers with RST.
type proxy struct {
	lis    net.Listener
	target string

	mu    sync.Mutex
	cond  *sync.Cond
	mode  proxyMode
	conns map[net.Conn]bool
	done  bool
}

type proxyMode int

const (
	proxyPass proxyMode = iota
	proxyBlackhole
	proxyReset
)

func (m proxyMode) String() string {
	return [...]string{"pass", "blackhole", "reset"}[m]
}

func startProxy(t testing.TB, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{lis: lis, target: target, conns: map[net.Conn]bool{}}
	p.cond = sync.NewCond(&p.mu)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.lis.Addr().String() }

// set switches the mode; reset closes every open connection.
func (p *proxy) set(m proxyMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = m
	if m == proxyReset {
		for c := range p.conns {
			c.Close()
		}
	}
	p.cond.Broadcast()
}

func (p *proxy) getMode() proxyMode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

func (p *proxy) close() {
	p.lis.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = true
	for c := range p.conns {
		c.Close()
	}
	p.cond.Broadcast()
}

// track registers c; false (and c closed) if the proxy is resetting or
// closed.
func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done || p.mode == proxyReset {
		c.Close()
		return false
	}
	p.conns[c] = true
	return true
}

func (p *proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// gate blocks while the proxy blackholes; false once the connection
// should end (reset or closed).
func (p *proxy) gate() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.mode == proxyBlackhole && !p.done {
		p.cond.Wait()
	}
	return !p.done && p.mode != proxyReset
}

func (p *proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			continue
		}
		go p.serve(c)
	}
}

func (p *proxy) serve(c net.Conn) {
	defer p.untrack(c)
	if !p.gate() { // a blackholed connect hangs here
		return
	}
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		return // the bookie is down: the client sees the connection close
	}
	if !p.track(u) {
		return
	}
	defer p.untrack(u)
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(u, c) })
	wg.Go(func() { p.pipe(c, u) })
	wg.Wait()
}

// pipe copies src to dst through the gate, closing both at the end.
func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.gate() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: end both directions
		}
	}
}
