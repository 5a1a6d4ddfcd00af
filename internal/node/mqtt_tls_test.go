package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/listen"
	"github.com/quiremq/quire/internal/testcert"
)

// TestNodeMQTTOverTLSAndQUIC: with tls_cert_file and tls_key_file set, the
// node serves MQTT over TLS and QUIC; a paho v5 client subscribed over TLS
// receives what another publishes over QUIC, and the reverse.
func TestNodeMQTTOverTLSAndQUIC(t *testing.T) {
	cfg := testConfig(t.TempDir())
	certFile, keyFile, pool := selfSignedCert(t)
	cfg.MQTT.TLSCertFile, cfg.MQTT.TLSKeyFile = certFile, keyFile
	cfg.MQTT.TLS, cfg.MQTT.QUIC = "127.0.0.1:0", "127.0.0.1:0"
	n := startNode(t, cfg, nil)
	for _, name := range []string{"tls", "quic"} {
		if n.MQTTAddr(name) == nil {
			t.Fatalf("listener %s not served", name)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tc := &tls.Config{RootCAs: pool}
	dial := map[string]func() (net.Conn, error){
		"tls":  func() (net.Conn, error) { return tls.Dial("tcp", n.MQTTAddr("tls").String(), tc) },
		"quic": func() (net.Conn, error) { return listen.DialQUIC(ctx, n.MQTTAddr("quic").String(), tc) },
	}
	type client struct {
		*paho.Client
		got chan string
	}
	connect := func(via, id string) client {
		conn, err := dial[via]()
		if err != nil {
			t.Fatalf("dial %s: %v", via, err)
		}
		c := client{got: make(chan string, 10)}
		c.Client = paho.NewClient(paho.ClientConfig{Conn: conn,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				c.got <- pr.Packet.Topic + "=" + string(pr.Packet.Payload)
				return true, nil
			}}})
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
			t.Fatalf("connect over %s: %v", via, err)
		}
		t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
		return c
	}
	for _, pair := range [][2]string{{"tls", "quic"}, {"quic", "tls"}} {
		sub, pub := connect(pair[0], "sub-"+pair[0]), connect(pair[1], "pub-"+pair[1])
		topic := "secure/" + pair[1]
		if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := pub.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("hello")}); err != nil {
			t.Fatalf("publish over %s: %v", pair[1], err)
		}
		select {
		case m := <-sub.got:
			if m != topic+"=hello" {
				t.Fatalf("got %q", m)
			}
		case <-ctx.Done():
			t.Fatalf("nothing delivered over %s from %s", pair[0], pair[1])
		}
	}
}

func selfSignedCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	return testcert.Write(t, "quire-node-test")
}

// [mqtt] max_keep_alive reaches the broker: an MQTT 5 client asking for a
// longer keep alive, or for none, is told the cap as Server Keep Alive;
// one asking for less keeps its own.
func TestNodeMQTTMaxKeepAlive(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.MQTT.MaxKeepAlive = 20
	n := startNode(t, cfg, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		ask  uint16
		told *uint16 // nil: no Server Keep Alive in CONNACK
	}{{0, paho.Uint16(20)}, {300, paho.Uint16(20)}, {10, nil}} {
		conn, err := net.Dial("tcp", n.MQTTAddr("tcp").String())
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		ca, err := c.Connect(ctx, &paho.Connect{ClientID: fmt.Sprintf("ka-%d", tc.ask), KeepAlive: tc.ask, CleanStart: true})
		if err != nil {
			t.Fatalf("connect asking keep alive %d: %v", tc.ask, err)
		}
		got := ca.Properties.ServerKeepAlive
		switch {
		case tc.told == nil && got != nil:
			t.Errorf("asked %d: Server Keep Alive %d, want none", tc.ask, *got)
		case tc.told != nil && (got == nil || *got != *tc.told):
			t.Errorf("asked %d: Server Keep Alive %v, want %d", tc.ask, got, *tc.told)
		}
		c.Disconnect(&paho.Disconnect{})
	}
}
