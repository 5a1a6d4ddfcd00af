package node

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/listen"
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
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "quire-node-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
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
