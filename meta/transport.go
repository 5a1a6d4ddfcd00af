package meta

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// streamLayer is a raft.StreamLayer whose connections are gRPC streams of
// the RaftTransport service on the inner gRPC server: hashicorp's
// NetworkTransport (pipelining, heartbeat fast path, snapshot streaming,
// connection pool) runs unchanged on top, and Raft needs no port of its own.
//
// A connection is one bidirectional stream; bytes written are sent as
// RaftFrames of at most maxFrame bytes. Deadlines are honoured by cancelling
// the stream, which NetworkTransport treats as a broken connection (it
// drops and redials connections after any error).
type streamLayer struct {
	metav1.UnimplementedRaftTransportServer

	addr  string // advertised address (this voter's meta_addrs entry)
	dials []grpc.DialOption

	accept chan net.Conn
	done   chan struct{}
	once   sync.Once

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

var _ raft.StreamLayer = (*streamLayer)(nil)

const maxFrame = 1 << 20

func newStreamLayer(addr string, dials []grpc.DialOption) *streamLayer {
	return &streamLayer{addr: addr, dials: dials, accept: make(chan net.Conn), done: make(chan struct{}), conns: map[string]*grpc.ClientConn{}}
}

// Accept returns the next incoming connection.
func (l *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting and closes the outgoing gRPC connections.
func (l *streamLayer) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.mu.Lock()
		for _, cc := range l.conns {
			cc.Close()
		}
		l.conns = nil
		l.mu.Unlock()
	})
	return nil
}

// closeConns closes the outgoing gRPC connections and refuses new ones, so
// that dials in flight (WaitForReady, up to the transport's timeout, to a
// peer that is down) end now: Server.Stop calls it before raft.Shutdown,
// which waits for every RPC goroutine. Close still stops accepting.
func (l *streamLayer) closeConns() {
	l.mu.Lock()
	for _, cc := range l.conns {
		cc.Close()
	}
	l.conns = nil
	l.mu.Unlock()
}

// Addr returns the advertised address.
func (l *streamLayer) Addr() net.Addr { return strAddr(l.addr) }

// Dial opens a stream to the RaftTransport service at address.
func (l *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	cc, err := l.clientConn(string(address))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	opened := make(chan struct{})
	if timeout > 0 {
		t := time.AfterFunc(timeout, func() {
			select {
			case <-opened:
			default:
				cancel()
			}
		})
		defer t.Stop()
	}
	st, err := metav1.NewRaftTransportClient(cc).Stream(ctx, grpc.WaitForReady(true))
	close(opened)
	if err != nil {
		cancel()
		return nil, err
	}
	c := newStreamConn(st, cancel, l.addr, string(address))
	return c, nil
}

func (l *streamLayer) clientConn(addr string) (*grpc.ClientConn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return nil, net.ErrClosed
	}
	if cc := l.conns[addr]; cc != nil {
		return cc, nil
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, l.dials...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	l.conns[addr] = cc
	return cc, nil
}

// Stream serves one incoming raft connection until either side closes it.
func (l *streamLayer) Stream(st grpc.BidiStreamingServer[metav1.RaftFrame, metav1.RaftFrame]) error {
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	c := newStreamConn(st, cancel, l.addr, "peer")
	select {
	case l.accept <- c:
	case <-l.done:
		return net.ErrClosed
	case <-ctx.Done():
		return nil
	}
	<-ctx.Done()
	return nil
}

// frameStream is what client and server streams have in common.
type frameStream interface {
	Send(*metav1.RaftFrame) error
	Recv() (*metav1.RaftFrame, error)
}

// streamConn adapts a gRPC stream to net.Conn.
type streamConn struct {
	st            frameStream
	cancel        context.CancelFunc
	local, remote strAddr

	rbuf []byte // unread part of the last frame (read side only)

	// sendMu is held by Write while it sends: a client stream's CloseSend
	// must not run concurrently with a Send (grpc.ClientStream).
	sendMu sync.Mutex

	mu       sync.Mutex
	rdl, wdl time.Time
	timedOut bool
	closed   bool
}

func newStreamConn(st frameStream, cancel context.CancelFunc, local, remote string) *streamConn {
	return &streamConn{st: st, cancel: cancel, local: strAddr(local), remote: strAddr(remote)}
}

// arm cancels the stream when deadline d passes before the returned stop
// function is called.
func (c *streamConn) arm(d time.Time) (stop func()) {
	if d.IsZero() {
		return func() {}
	}
	t := time.AfterFunc(time.Until(d), func() {
		c.mu.Lock()
		c.timedOut = true
		c.mu.Unlock()
		c.cancel()
	})
	return func() { t.Stop() }
}

func (c *streamConn) err(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timedOut {
		return os.ErrDeadlineExceeded
	}
	if c.closed {
		return net.ErrClosed
	}
	if errors.Is(err, io.EOF) {
		return io.EOF
	}
	return err
}

func (c *streamConn) Read(p []byte) (int, error) {
	if len(c.rbuf) == 0 {
		c.mu.Lock()
		d := c.rdl
		c.mu.Unlock()
		stop := c.arm(d)
		f, err := c.st.Recv()
		stop()
		if err != nil {
			return 0, c.err(err)
		}
		c.rbuf = f.Data
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

func (c *streamConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	d := c.wdl
	c.mu.Unlock()
	stop := c.arm(d)
	defer stop()
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	n := 0
	for n < len(p) {
		m := min(len(p)-n, maxFrame)
		if err := c.st.Send(&metav1.RaftFrame{Data: p[n : n+m]}); err != nil {
			return n, c.err(err)
		}
		n += m
	}
	return n, nil
}

func (c *streamConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	// Half-close a client stream unless a Write is sending (raft closes a
	// pipeline's connection from its response decoder while the
	// replicator writes): the cancel below cuts that Write instead.
	if cs, ok := c.st.(grpc.ClientStream); ok && c.sendMu.TryLock() {
		cs.CloseSend()
		c.sendMu.Unlock()
	}
	c.cancel()
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return c.local }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

func (c *streamConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl, c.wdl = t, t
	c.mu.Unlock()
	return nil
}

func (c *streamConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	c.mu.Unlock()
	return nil
}

func (c *streamConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.mu.Unlock()
	return nil
}

type strAddr string

func (a strAddr) Network() string { return "grpc" }
func (a strAddr) String() string  { return string(a) }
