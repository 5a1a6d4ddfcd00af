package listen

import (
	"context"
	"crypto/tls"
	"sync/atomic"
	"testing"
	"time"
)

// TestQUIC: a QUIC stream echoes like a TCP connection; a listener without
// a certificate is refused; the Limiter bounds QUIC connections and a
// closed stream returns its slot.
func TestQUIC(t *testing.T) {
	if _, err := Listen(Config{Kind: QUIC, Addr: "127.0.0.1:0"}); err == nil {
		t.Fatal("QUIC without TLS was accepted")
	}
	cf, kf, pool := writeCert(t)
	tc, err := LoadTLS(cf, kf, "")
	if err != nil {
		t.Fatal(err)
	}
	var refused atomic.Int32
	lim := NewLimiter(1)
	l, err := Listen(Config{Kind: QUIC, Addr: "127.0.0.1:0", TLS: tc, Limiter: lim,
		OnRefused: func(name, reason string) {
			if name == "quic" && reason == RefusedLimit {
				refused.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Name() != "quic" {
		t.Fatalf("name %q", l.Name())
	}
	echo(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := &tls.Config{RootCAs: pool}
	c1, err := DialQUIC(ctx, l.Addr().String(), client)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c1, "over quic")
	roundTrip(t, c1, "and again")

	// Over the limit: the second connection is closed unserved.
	c2, err := DialQUIC(ctx, l.Addr().String(), client)
	if err == nil {
		c2.SetDeadline(time.Now().Add(5 * time.Second))
		c2.Write([]byte("x"))
		if n, err := c2.Read(make([]byte, 1)); err == nil {
			t.Fatalf("connection over the limit read %d bytes", n)
		}
		c2.Close()
	}
	waitFor(t, func() bool { return refused.Load() == 1 })
	c1.Close()
	waitFor(t, func() bool { return lim.Open() == 0 })
	c3, err := DialQUIC(ctx, l.Addr().String(), client)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c3, "three")
	c3.Close()
	waitFor(t, func() bool { return lim.Open() == 0 })

	// DialQUIC adds ALPN "mqtt" to the caller's protocols; the server picks it.
	c4, err := DialQUIC(ctx, l.Addr().String(), &tls.Config{RootCAs: pool, NextProtos: []string{"h3"}})
	if err != nil {
		t.Fatalf("dial with an extra ALPN: %v", err)
	}
	defer c4.Close()
	roundTrip(t, c4, "alpn")
}
