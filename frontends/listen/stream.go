package listen

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
)

// acceptQueue hands connections from a producer goroutine to Accept. It
// holds at most one connection at a time (an unbuffered channel), and closes
// what it holds when the listener closes.
type acceptQueue struct {
	ch        chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
	errMu     sync.Mutex
	err       error // why the producer stopped, if it did before Close
}

func newAcceptQueue() *acceptQueue {
	return &acceptQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

// put offers c to Accept, closing it if the listener closes first.
func (q *acceptQueue) put(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		c.Close()
		return false
	}
}

func (q *acceptQueue) fail(err error) {
	q.errMu.Lock()
	if q.err == nil {
		q.err = err
	}
	q.errMu.Unlock()
	q.close()
}

func (q *acceptQueue) close() { q.closeOnce.Do(func() { close(q.done) }) }

func (q *acceptQueue) get(ctx context.Context) (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		q.errMu.Lock()
		defer q.errMu.Unlock()
		if q.err != nil {
			return nil, q.err
		}
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// tcpListener serves raw TCP or TLS.
type tcpListener struct {
	cfg Config
	ll  *limitListener
	q   *acceptQueue
}

func newTCPListener(cfg Config, ll *limitListener) *tcpListener {
	l := &tcpListener{cfg: cfg, ll: ll, q: newAcceptQueue()}
	go l.run()
	return l
}

func (l *tcpListener) run() {
	for {
		c, err := l.ll.Accept()
		if errors.Is(err, net.ErrClosed) {
			l.q.close()
			return
		}
		if err != nil {
			l.q.fail(err)
			return
		}
		if tc, ok := c.(*slotConn).Conn.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		if l.cfg.TLS != nil {
			c = tls.Server(c, l.cfg.TLS)
		}
		if !l.q.put(c) {
			return
		}
	}
}

func (l *tcpListener) Accept(ctx context.Context) (Conn, error) {
	c, err := l.q.get(ctx)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, name: l.cfg.Name}, nil
}

func (l *tcpListener) Addr() net.Addr { return l.ll.Addr() }
func (l *tcpListener) Name() string   { return l.cfg.Name }

func (l *tcpListener) Close() error {
	l.q.close()
	return l.ll.Close()
}

var _ Listener = (*tcpListener)(nil)
