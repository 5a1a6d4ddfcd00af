package listen

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// wsListener serves WebSocket or WSS: an HTTP server whose handler upgrades
// the request and hands the message stream to Accept.
type wsListener struct {
	cfg Config
	ll  *limitListener
	q   *acceptQueue
	srv *http.Server
}

func newWSListener(cfg Config, ll *limitListener) *wsListener {
	l := &wsListener{cfg: cfg, ll: ll, q: newAcceptQueue()}
	mux := http.NewServeMux()
	mux.HandleFunc(cfg.Path, l.serve)
	l.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		IdleTimeout:       cfg.HandshakeTimeout,
		ErrorLog:          nil,
	}
	var nl net.Listener = ll
	if cfg.TLS != nil {
		nl = tls.NewListener(ll, cfg.TLS)
	}
	go func() {
		err := l.srv.Serve(nl)
		if !errors.Is(err, http.ErrServerClosed) {
			l.q.fail(err)
		}
	}()
	return l
}

func (l *wsListener) serve(w http.ResponseWriter, r *http.Request) {
	if !offers(r, l.cfg.Subprotocols) {
		l.ll.refused(RefusedHandshake)
		http.Error(w, "the WebSocket subprotocol must be one of mqtt, mqttv3.1", http.StatusBadRequest)
		return
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: l.cfg.Subprotocols,
		// MQTT authenticates at its own layer; browsers on any origin may
		// connect (as with Mosquitto and EMQX).
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		l.ll.refused(RefusedHandshake)
		return
	}
	// MQTT's own Maximum Packet Size bounds what is buffered; NetConn
	// streams a message, so no WebSocket message limit is needed.
	ws.SetReadLimit(-1)
	// The stream outlives the HTTP handler (the connection is hijacked),
	// so its context is not the request's; it ends when the stream closes.
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	l.q.put(&wsConn{Conn: nc, remote: r.RemoteAddr})
}

// offers reports whether the handshake offers one of the subprotocols.
func offers(r *http.Request, protos []string) bool {
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(h, ",") {
			if slices.Contains(protos, strings.TrimSpace(p)) {
				return true
			}
		}
	}
	return false
}

// wsConn reports the HTTP peer's address (NetConn's RemoteAddr is synthetic).
type wsConn struct {
	net.Conn
	remote string
}

func (c *wsConn) RemoteAddr() net.Addr { return wsAddr(c.remote) }

type wsAddr string

func (a wsAddr) Network() string { return "websocket" }
func (a wsAddr) String() string  { return string(a) }

func (l *wsListener) Accept(ctx context.Context) (Conn, error) {
	c, err := l.q.get(ctx)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, name: l.cfg.Name}, nil
}

func (l *wsListener) Addr() net.Addr { return l.ll.Addr() }
func (l *wsListener) Name() string   { return l.cfg.Name }

// Close stops the HTTP server (idle upgrade requests included); hijacked
// streams already handed out stay open.
func (l *wsListener) Close() error {
	l.q.close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := l.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = l.srv.Close()
	}
	return err
}

var _ Listener = (*wsListener)(nil)
