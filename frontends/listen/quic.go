package listen

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// QUIC: a client opens one QUIC connection (TLS 1.3, ALPN "mqtt") and
// then one bidirectional stream, which carries the protocol's bytes exactly
// as a TCP connection would (EMQX's "single stream" mode). The stream is a
// Conn like any other, so the front-ends need nothing QUIC-specific. All
// QUIC connections share one UDP socket, but each still takes a Limiter
// slot: the slot bounds connections (memory), not only file descriptors.

// ALPN is the application protocol QUIC listeners offer when the TLS
// config names none.
const ALPN = "mqtt"

// quicListener serves MQTT over QUIC.
type quicListener struct {
	cfg    Config
	ln     *quic.Listener
	q      *acceptQueue
	ctx    context.Context
	cancel context.CancelFunc
}

func listenQUIC(cfg Config) (Listener, error) {
	if cfg.TLS == nil {
		return nil, errors.New("listen " + cfg.Name + ": QUIC needs a TLS certificate")
	}
	tc := cfg.TLS.Clone()
	tc.MinVersion = tls.VersionTLS13
	if len(tc.NextProtos) == 0 {
		tc.NextProtos = []string{ALPN}
	}
	ln, err := quic.ListenAddr(cfg.Addr, tc, &quic.Config{
		HandshakeIdleTimeout: cfg.HandshakeTimeout,
		// MQTT keep alive is the application's liveness check; QUIC's idle
		// timeout only has to outlast it (the longest allowed keep alive
		// is 18 h; a client that sends nothing for longer is gone).
		MaxIdleTimeout:        5 * time.Minute,
		KeepAlivePeriod:       0,
		MaxIncomingStreams:    1,
		MaxIncomingUniStreams: -1,
	})
	if err != nil {
		return nil, errors.New("listen " + cfg.Name + ": " + err.Error())
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &quicListener{cfg: cfg, ln: ln, q: newAcceptQueue(), ctx: ctx, cancel: cancel}
	go l.run()
	return l, nil
}

func (l *quicListener) run() {
	for {
		qc, err := l.ln.Accept(l.ctx)
		if err != nil {
			if errors.Is(err, quic.ErrServerClosed) || l.ctx.Err() != nil {
				l.q.close()
			} else {
				l.q.fail(err)
			}
			return
		}
		if !l.cfg.Limiter.Acquire() {
			qc.CloseWithError(0x1, "connection limit")
			if l.cfg.OnRefused != nil {
				l.cfg.OnRefused(l.cfg.Name, RefusedLimit)
			}
			continue
		}
		go l.stream(qc)
	}
}

// stream waits for the client's stream and queues it for Accept.
func (l *quicListener) stream(qc *quic.Conn) {
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	st, err := qc.AcceptStream(ctx)
	cancel()
	if err != nil {
		qc.CloseWithError(0x2, "no stream opened")
		l.cfg.Limiter.Release()
		return
	}
	l.q.put(&quicConn{Stream: st, qc: qc, lim: l.cfg.Limiter})
}

func (l *quicListener) Accept(ctx context.Context) (Conn, error) {
	c, err := l.q.get(ctx)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, name: l.cfg.Name}, nil
}

func (l *quicListener) Addr() net.Addr { return l.ln.Addr() }
func (l *quicListener) Name() string   { return l.cfg.Name }

func (l *quicListener) Close() error {
	l.cancel()
	l.q.close()
	return l.ln.Close()
}

var _ Listener = (*quicListener)(nil)

// quicConn is one QUIC stream as a net.Conn. Closing it closes the whole
// QUIC connection and releases its Limiter slot.
type quicConn struct {
	*quic.Stream
	qc   *quic.Conn
	lim  *Limiter
	once sync.Once
}

func (c *quicConn) LocalAddr() net.Addr  { return c.qc.LocalAddr() }
func (c *quicConn) RemoteAddr() net.Addr { return c.qc.RemoteAddr() }

// Close closes the stream and the connection.
func (c *quicConn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.Stream.Close()
		c.Stream.CancelRead(0)
		// CloseWithError may discard stream data not yet sent (a final
		// DISCONNECT); quic-go offers no wait for the peer's ack of it.
		c.qc.CloseWithError(0, "")
		c.lim.Release()
	})
	return err
}

// TLSConnectionState returns the QUIC connection's TLS state, for
// PeerCertificate.
func (c *quicConn) TLSConnectionState() tls.ConnectionState { return c.qc.ConnectionState().TLS }

// DialQUIC opens a QUIC connection to addr and its one stream, as a
// net.Conn: the client side of a QUIC listener (tests, tools, benchmarks).
func DialQUIC(ctx context.Context, addr string, tc *tls.Config) (net.Conn, error) {
	tc = tc.Clone()
	if !slices.Contains(tc.NextProtos, ALPN) {
		tc.NextProtos = append(tc.NextProtos, ALPN)
	}
	qc, err := quic.DialAddr(ctx, addr, tc, &quic.Config{MaxIdleTimeout: 5 * time.Minute})
	if err != nil {
		return nil, err
	}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		qc.CloseWithError(0x2, "")
		return nil, err
	}
	return &quicConn{Stream: st, qc: qc, lim: NewLimiter(1)}, nil
}
