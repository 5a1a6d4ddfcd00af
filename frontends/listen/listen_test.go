package listen

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/quiremq/quire/internal/testcert"
)

// echo accepts connections from l and echoes each until EOF.
func echo(t *testing.T, l Listener) {
	t.Helper()
	go func() {
		for {
			c, err := l.Accept(context.Background())
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

func TestTCPEchoAndName(t *testing.T) {
	l, err := Listen(Config{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Name() != "tcp" {
		t.Fatalf("name %q", l.Name())
	}
	got := make(chan Conn, 1)
	go func() {
		c, err := l.Accept(context.Background())
		if err == nil {
			got <- c
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := <-got
	if sc.Listener() != "tcp" {
		t.Fatalf("conn listener %q", sc.Listener())
	}
	go func() { io.Copy(sc, sc); sc.Close() }()
	roundTrip(t, c, "hello")
}

// TestLimit: with MaxConns 1 a second socket is closed unserved and counted;
// closing the first frees its slot for a third.
func TestLimit(t *testing.T) {
	var refused atomic.Int32
	lim := NewLimiter(1)
	l, err := Listen(Config{Addr: "127.0.0.1:0", Limiter: lim, OnRefused: func(name, reason string) {
		if name == "tcp" && reason == RefusedLimit {
			refused.Add(1)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	echo(t, l)
	c1, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c1, "one")
	c2, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatalf("second connection over the limit read %d bytes, want it closed", n)
	}
	c2.Close()
	// The listener counts the refusal after closing (the client may read
	// the close first).
	waitFor(t, func() bool { return refused.Load() == 1 })
	c1.Close()
	waitFor(t, func() bool { return lim.Open() == 0 })
	c3, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	roundTrip(t, c3, "three")
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAcceptAfterCloseAndCancel(t *testing.T) {
	for _, kind := range []Kind{TCP, WebSocket} {
		l, err := Listen(Config{Addr: "127.0.0.1:0", Kind: kind})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := l.Accept(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: Accept(cancelled) = %v", kind, err)
		}
		l.Close()
		if _, err := l.Accept(context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("%s: Accept after Close = %v, want ErrClosed", kind, err)
		}
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 and returns the
// cert and key file names and a pool trusting it.
func writeCert(t *testing.T) (string, string, *x509.CertPool) {
	return testcert.Write(t, "quire-test")
}

func TestTLS(t *testing.T) {
	cf, kf, pool := writeCert(t)
	tc, err := LoadTLS(cf, kf, "")
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(Config{Addr: "127.0.0.1:0", TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Name() != "tls" {
		t.Fatalf("name %q", l.Name())
	}
	echo(t, l)
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "secret")
	// A plain client gets no echo.
	pc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(5 * time.Second))
	pc.Write([]byte("plaintext hello\r\n\r\n"))
	buf := make([]byte, 64)
	n, _ := pc.Read(buf)
	if string(buf[:n]) == "plaintext hello" {
		t.Fatal("TLS listener echoed plaintext")
	}
}

func TestLoadTLSErrors(t *testing.T) {
	if _, err := LoadTLS("/nonexistent/c", "/nonexistent/k", ""); err == nil {
		t.Fatal("LoadTLS of missing files succeeded")
	}
	cf, kf, _ := writeCert(t)
	if _, err := LoadTLS(cf, kf, kf); err == nil {
		t.Fatal("LoadTLS with a key as client CA succeeded")
	}
	c, err := LoadTLS(cf, kf, cf)
	if err != nil || c.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatalf("client CA: %v %v", c, err)
	}
}

// TestWebSocket: binary messages become one stream both ways, a packet split
// across messages arrives whole, and the subprotocol "mqtt" is required.
func TestWebSocket(t *testing.T) {
	for _, secure := range []bool{false, true} {
		cfg := Config{Addr: "127.0.0.1:0", Kind: WebSocket}
		client := http.DefaultClient
		scheme := "ws"
		if secure {
			cf, kf, pool := writeCert(t)
			tc, err := LoadTLS(cf, kf, "")
			if err != nil {
				t.Fatal(err)
			}
			cfg.TLS = tc
			client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
			scheme = "wss"
		}
		var refused atomic.Int32
		cfg.OnRefused = func(string, string) { refused.Add(1) }
		l, err := Listen(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[bool]string{false: "ws", true: "wss"}[secure]; l.Name() != want {
			t.Fatalf("name %q, want %q", l.Name(), want)
		}
		echo(t, l)
		url := scheme + "://" + l.Addr().String() + "/mqtt"
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ws, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: client, Subprotocols: []string{"mqtt"}})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Header.Get("Sec-WebSocket-Protocol") != "mqtt" {
			t.Fatalf("negotiated %q", resp.Header.Get("Sec-WebSocket-Protocol"))
		}
		// Two messages, one logical byte stream.
		ws.Write(ctx, websocket.MessageBinary, []byte("hel"))
		ws.Write(ctx, websocket.MessageBinary, []byte("lo"))
		var got []byte
		for len(got) < 5 {
			typ, b, err := ws.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if typ != websocket.MessageBinary {
				t.Fatalf("message type %v", typ)
			}
			got = append(got, b...)
		}
		if string(got) != "hello" {
			t.Fatalf("echo %q", got)
		}
		ws.Close(websocket.StatusNormalClosure, "")

		_, resp, err = websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: client, Subprotocols: []string{"chat"}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("dial without mqtt subprotocol: err %v resp %v", err, resp)
		}
		if refused.Load() != 1 {
			t.Fatalf("refused = %d", refused.Load())
		}
		cancel()
		l.Close()
	}
}

// CloseWrite half-closes an accepted TCP or TLS connection through the
// package's wrappers: the client reads what was written, then EOF, and
// can still write to the server; a WebSocket connection is not
// half-closed (its frames need a close handshake).
func TestCloseWrite(t *testing.T) {
	cf, kf, pool := writeCert(t)
	tc, err := LoadTLS(cf, kf, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tlsOn := range []bool{false, true} {
		cfg := Config{Addr: "127.0.0.1:0"}
		if tlsOn {
			cfg.TLS = tc
		}
		l, err := Listen(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		got := make(chan string, 1)
		go func() {
			sc, err := l.Accept(context.Background())
			if err != nil {
				got <- err.Error()
				return
			}
			defer sc.Close()
			sc.Write([]byte("bye"))
			if !CloseWrite(sc) {
				got <- "CloseWrite failed"
				return
			}
			sc.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(sc)
			got <- string(b)
		}()
		var c net.Conn
		if tlsOn {
			c, err = tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: pool})
		} else {
			c, err = net.Dial("tcp", l.Addr().String())
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "bye" {
			t.Fatalf("tls %v: client read %q, %v; want bye then EOF", tlsOn, b, err)
		}
		if _, err := c.Write([]byte("after")); err != nil {
			t.Fatalf("tls %v: client write after the server's CloseWrite: %v", tlsOn, err)
		}
		c.Close()
		if s := <-got; s != "after" {
			t.Fatalf("tls %v: server read %q after its CloseWrite, want after", tlsOn, s)
		}
	}
	if CloseWrite(&wsConn{Conn: &net.TCPConn{}}) {
		t.Fatal("CloseWrite half-closed a WebSocket connection")
	}
}
