// Package listen turns network listeners into one stream abstraction for the
// protocol front-ends: a Listener accepts Conns, and a Conn is a net.Conn (a
// byte stream with deadlines) that also says which listener accepted it.
//
// # Transports
//
//	Kind  stream                              Config.TLS
//	tcp   the TCP connection                  nil: plain, set: TLS
//	ws    binary WebSocket messages, read     nil: ws://, set: wss://
//	      and written as one byte stream
//
// A front-end never sees the transport: MQTT over WebSocket (MQTT 5.0 §6)
// sends MQTT packets in binary messages, and a packet may span messages or a
// message hold several packets, so the WebSocket implementation presents the
// concatenated message payloads as a stream (coder/websocket's NetConn). The
// WebSocket handshake must offer one of Config.Subprotocols (default "mqtt",
// plus the legacy "mqttv3.1"); a client that offers none is refused with
// HTTP 400, never served a stream it did not ask for. Text messages close the
// connection (MQTT 5.0 §6: "MUST be closed").
//
// QUIC (quic-go; quic.go) is one more Kind: the client opens one
// bidirectional stream on its QUIC connection, and that stream is the Conn,
// so front-ends serve it like TCP. QUIC always runs TLS 1.3 (ALPN "mqtt").
//
// # Limits and clean close
//
// A process may hold at most 20,000 open files on Quire's machines, so every
// accepted socket takes a slot from a Limiter before the front-end sees it;
// one over the limit is closed at once and counted (Config.OnRefused). Several
// listeners share a node-wide Limiter by passing the same one. A slot is
// returned when the Conn is closed (once, however often Close is called).
// Temporary accept errors (EMFILE, ENFILE, ECONNABORTED) back off from 5 ms to
// 1 s instead of spinning or stopping the listener. Close stops accepting and
// closes the sockets still waiting in Accept's queue; it does not close
// connections already handed out — their owner does.
//
// TLS certificates come from PEM files (LoadTLS); a client CA file turns on
// client-certificate verification. The TLS handshake runs on the first Read,
// so the front-end's first read deadline bounds it as well.
package listen

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is a transport.
type Kind string

// Transports.
const (
	TCP       Kind = "tcp"  // raw TCP, or TLS when Config.TLS is set
	WebSocket Kind = "ws"   // WebSocket, or WSS when Config.TLS is set
	QUIC      Kind = "quic" // QUIC (TLS 1.3 always), one stream per connection
)

// Conn is one accepted client connection: a byte stream.
type Conn interface {
	net.Conn
	// Listener is the Config.Name of the listener that accepted it.
	Listener() string
}

// Listener accepts Conns. Its methods are safe for concurrent use.
type Listener interface {
	// Accept waits for the next connection. It returns ErrClosed after
	// Close, and ctx.Err() when ctx is done.
	Accept(ctx context.Context) (Conn, error)
	// Addr is the address the listener is bound to (the real port when
	// Config.Addr asked for port 0).
	Addr() net.Addr
	// Name is Config.Name.
	Name() string
	// Close stops accepting. Connections already accepted stay open.
	Close() error
}

// ErrClosed is returned by Accept once the listener is closed.
var ErrClosed = errors.New("listen: listener closed")

// Refusal reasons passed to Config.OnRefused.
const (
	RefusedLimit     = "limit"     // the Limiter had no free slot
	RefusedHandshake = "handshake" // the WebSocket upgrade failed
)

// Config describes one listener.
type Config struct {
	// Name labels the listener in logs and metrics ("tcp", "tls", "ws", "wss").
	// Default: Kind, plus "s" with TLS.
	Name string
	// Kind is the transport; default TCP.
	Kind Kind
	// Addr is HOST:PORT to bind; port 0 picks a free port.
	Addr string
	// TLS, when set, wraps the transport in TLS (see LoadTLS).
	TLS *tls.Config
	// Limiter bounds open connections; share one across listeners for a
	// node-wide bound. Default: a private Limiter of MaxConns.
	Limiter *Limiter
	// MaxConns is the size of the private Limiter when Limiter is nil.
	// Default 10,000 (half of the machines' 20,000 open files).
	MaxConns int
	// Path is the HTTP path of a WebSocket listener; default "/mqtt". "/"
	// serves every path.
	Path string
	// Subprotocols are the WebSocket subprotocols accepted, preferred first;
	// default "mqtt", "mqttv3.1".
	Subprotocols []string
	// HandshakeTimeout bounds the WebSocket HTTP upgrade; default 10 s.
	HandshakeTimeout time.Duration
	// OnRefused, if set, is called for each connection closed unserved.
	OnRefused func(listener, reason string)
}

// DefaultMaxConns is the default MaxConns.
const DefaultMaxConns = 10000

// EnsureDefaults fills unset fields.
func (c *Config) EnsureDefaults() {
	if c.Kind == "" {
		c.Kind = TCP
	}
	if c.Name == "" {
		c.Name = string(c.Kind)
		if c.TLS != nil && c.Kind != QUIC {
			c.Name += "s"
		}
		if c.Name == "tcps" {
			c.Name = "tls"
		}
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.Limiter == nil {
		c.Limiter = NewLimiter(c.MaxConns)
	}
	if c.Path == "" {
		c.Path = "/mqtt"
	}
	if len(c.Subprotocols) == 0 {
		c.Subprotocols = []string{"mqtt", "mqttv3.1"}
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
}

// Validate reports a config that cannot work.
func (c *Config) Validate() error {
	switch c.Kind {
	case TCP, WebSocket, QUIC:
	default:
		return fmt.Errorf("listen %s: unknown kind %q (want tcp, ws or quic)", c.Name, c.Kind)
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("listen %s: address %q: %w", c.Name, c.Addr, err)
	}
	return nil
}

// Listen binds a listener as cfg says.
func Listen(cfg Config) (Listener, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Kind == QUIC {
		return listenQUIC(cfg)
	}
	nl, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Name, err)
	}
	ll := &limitListener{Listener: nl, cfg: &cfg}
	switch cfg.Kind {
	case WebSocket:
		return newWSListener(cfg, ll), nil
	default:
		return newTCPListener(cfg, ll), nil
	}
}

// LoadTLS builds a server tls.Config from PEM files. With clientCAFile set,
// clients must present a certificate signed by one of its CAs.
func LoadTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("listen: load certificate: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("listen: read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("listen: client CA file %s holds no PEM certificate", clientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Limiter counts open connections against a maximum. It is safe for
// concurrent use.
type Limiter struct {
	max  int64
	open atomic.Int64
}

// NewLimiter returns a Limiter allowing max open connections.
func NewLimiter(max int) *Limiter { return &Limiter{max: int64(max)} }

// Acquire takes a slot, reporting false when none is free.
func (l *Limiter) Acquire() bool {
	if l.open.Add(1) > l.max {
		l.open.Add(-1)
		return false
	}
	return true
}

// Release returns a slot.
func (l *Limiter) Release() { l.open.Add(-1) }

// Open is the number of slots taken.
func (l *Limiter) Open() int { return int(l.open.Load()) }

// Max is the limit.
func (l *Limiter) Max() int { return int(l.max) }

// limitListener accepts raw sockets, takes a Limiter slot for each and backs
// off on temporary errors. Both transports sit on it, so a WebSocket's
// underlying socket holds the slot from accept to close.
type limitListener struct {
	net.Listener
	cfg *Config
}

func (l *limitListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			if isTemporary(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return nil, err
		}
		delay = 0
		if !l.cfg.Limiter.Acquire() {
			c.Close()
			l.refused(RefusedLimit)
			continue
		}
		return &slotConn{Conn: c, lim: l.cfg.Limiter}, nil
	}
}

func (l *limitListener) refused(reason string) {
	if l.cfg.OnRefused != nil {
		l.cfg.OnRefused(l.cfg.Name, reason)
	}
}

// isTemporary reports accept errors worth retrying: out of file descriptors,
// or a connection reset before it was accepted.
func isTemporary(err error) bool {
	var ne interface{ Temporary() bool }
	if errors.As(err, &ne) && ne.Temporary() {
		return true
	}
	var se *os.SyscallError
	return errors.As(err, &se)
}

// slotConn releases its Limiter slot on the first Close.
type slotConn struct {
	net.Conn
	lim  *Limiter
	once sync.Once
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.lim.Release)
	return err
}

// conn adds the listener name to a net.Conn.
type conn struct {
	net.Conn
	name string
}

func (c *conn) Listener() string { return c.name }

// NetConn returns the wrapped connection (as tls.Conn.NetConn does).
func (c *conn) NetConn() net.Conn { return c.Conn }

// NetConn returns the wrapped connection.
func (c *slotConn) NetConn() net.Conn { return c.Conn }

// CloseWrite shuts down the writing side of c's transport — a TCP FIN
// after what was written — and reports whether it could: c, or a
// connection it wraps (NetConn, as *tls.Conn and this package's wrappers
// have), must be a TCP or Unix connection. Through TLS the FIN follows the
// records written (no close_notify: *tls.Conn.CloseWrite would not
// half-close the socket). A server that closes with input unread makes
// the kernel send a reset, which drops what it had not sent yet and may
// reach the client first; half-closing, reading what is left, then
// closing does not.
func CloseWrite(c net.Conn) bool {
	for c != nil {
		switch cw := c.(type) {
		case *net.TCPConn:
			return cw.CloseWrite() == nil
		case *net.UnixConn:
			return cw.CloseWrite() == nil
		case interface{ NetConn() net.Conn }:
			c = cw.NetConn()
		default:
			return false
		}
	}
	return false
}

// PeerCertificate returns the verified client certificate of a TLS
// connection (unwrapping through NetConn methods), or nil when there is
// none: not TLS, no certificate asked for or sent, or the handshake has not
// completed.
func PeerCertificate(c net.Conn) *x509.Certificate {
	for c != nil {
		var st tls.ConnectionState
		switch tc := c.(type) {
		case *tls.Conn:
			st = tc.ConnectionState()
		case interface{ TLSConnectionState() tls.ConnectionState }:
			st = tc.TLSConnectionState()
		}
		if st.Version != 0 {
			if !st.HandshakeComplete || len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
				return nil
			}
			return st.PeerCertificates[0]
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}

var _ Conn = (*conn)(nil)
