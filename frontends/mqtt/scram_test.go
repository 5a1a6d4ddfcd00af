package mqtt

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/auth"
	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// scramAuther is paho's side of the SCRAM-SHA-256 exchange, for the
// client of the exchange under way (a re-authentication starts a new one).
type scramAuther struct {
	t *testing.T
	c atomic.Pointer[auth.SCRAMClient]
}

func (a *scramAuther) Authenticate(in *paho.Auth) *paho.Auth {
	final, err := a.c.Load().Final(in.Properties.AuthData)
	if err != nil {
		a.t.Errorf("server-first: %v", err)
	}
	return &paho.Auth{ReasonCode: 0x18, Properties: &paho.AuthProperties{AuthMethod: auth.SCRAMMethod, AuthData: final}}
}

func (a *scramAuther) Authenticated() {}

// scramBroker runs a broker that authenticates with SCRAM-SHA-256 only
// (users carol/pencil and dave/ink) and lets each user publish and
// subscribe under users/<user>/.
func scramBroker(t *testing.T) *testBroker {
	t.Helper()
	users := map[string]string{}
	for user, pass := range map[string]string{"carol": "pencil", "dave": "ink"} {
		cred, err := auth.NewSCRAMCredentials([]byte(pass), auth.DefaultSCRAMIterations)
		if err != nil {
			t.Fatal(err)
		}
		users[user] = cred.String()
	}
	sc, err := auth.NewSCRAM(users)
	if err != nil {
		t.Fatal(err)
	}
	acl, err := auth.NewACL([]auth.Rule{{Allow: true, Actions: auth.Publish | auth.Subscribe, Topics: []string{"users/%u/#"}}}, false)
	if err != nil {
		t.Fatal(err)
	}
	return startBroker(t, nil, func(o *Options) {
		o.SCRAM = sc
		o.ACL = acl
		o.Auth = &auth.Chain{} // no password users, no anonymous access
	})
}

// scramConn is a paho.golang v5 client authenticated with SCRAM.
type scramConn struct {
	*paho.Client
	auther       *scramAuther
	ack          *paho.Connack
	first        *auth.SCRAMClient
	disconnected chan *paho.Disconnect
}

// scramConnect connects with enhanced authentication by method as user.
func scramConnect(t *testing.T, addr, method, user, pass string) (*scramConn, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	sc := &auth.SCRAMClient{User: user, Password: pass}
	c := &scramConn{auther: &scramAuther{t: t}, first: sc, disconnected: make(chan *paho.Disconnect, 1)}
	c.auther.c.Store(sc)
	c.Client = paho.NewClient(paho.ClientConfig{Conn: conn, AuthHandler: c.auther,
		OnServerDisconnect: func(d *paho.Disconnect) { c.disconnected <- d }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.ack, err = c.Connect(ctx, &paho.Connect{ClientID: "c-" + user, KeepAlive: 30, CleanStart: true,
		Properties: &paho.ConnectProperties{AuthMethod: method, AuthData: sc.First()}})
	if err == nil {
		t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	}
	return c, err
}

// reauth re-authenticates c by method as user (MQTT 5.0 §4.12.1) and
// returns the server's answer (AUTH, or the DISCONNECT that ended the
// connection) and the SCRAM client of the exchange.
func (c *scramConn) reauth(t *testing.T, method, user, pass string) (*paho.AuthResponse, *auth.SCRAMClient) {
	t.Helper()
	sc := &auth.SCRAMClient{User: user, Password: pass}
	c.auther.c.Store(sc)
	resp, err := c.Authenticate(ctx5(t), &paho.Auth{ReasonCode: 0x19,
		Properties: &paho.AuthProperties{AuthMethod: method, AuthData: sc.First()}})
	if err != nil {
		t.Fatalf("re-authentication as %s: %v", user, err)
	}
	return resp, sc
}

// TestSCRAMEnhancedAuth: paho v5 authenticates with SCRAM-SHA-256 through
// CONNECT, AUTH, AUTH, CONNACK; the CONNACK carries a server proof the
// client verifies; the authenticated user is the one the ACL sees; a wrong
// password gets 0x86 and an unknown method 0x8C.
func TestSCRAMEnhancedAuth(t *testing.T) {
	b := scramBroker(t)
	connect := func(method, user, pass string) (*paho.Client, *paho.Connack, *auth.SCRAMClient, error) {
		c, err := scramConnect(t, b.tcp, method, user, pass)
		return c.Client, c.ack, c.first, err
	}
	c, ack, scl, err := connect(auth.SCRAMMethod, "carol", "pencil")
	if err != nil {
		t.Fatalf("SCRAM connect: %v (%+v)", err, ack)
	}
	if ack.Properties == nil || ack.Properties.AuthMethod != auth.SCRAMMethod {
		t.Fatalf("CONNACK properties %+v", ack.Properties)
	}
	if err := scl.Verify(ack.Properties.AuthData); err != nil {
		t.Fatalf("server proof: %v", err)
	}
	ctx := ctx5(t)
	if pr, err := c.Publish(ctx, &paho.Publish{Topic: "users/carol/x", QoS: 1, Payload: []byte("mine")}); err != nil || pr.ReasonCode != 0 {
		t.Fatalf("publish as carol: %v %+v", err, pr)
	}
	if pr, _ := c.Publish(ctx, &paho.Publish{Topic: "users/dave/x", QoS: 1, Payload: []byte("not mine")}); pr == nil || pr.ReasonCode != 0x87 {
		t.Fatalf("publish into another user's space: %+v", pr)
	}
	if _, ack, _, err := connect(auth.SCRAMMethod, "carol", "crayon"); err == nil || ack == nil || ack.ReasonCode != 0x86 {
		t.Fatalf("wrong password: %v %+v", err, ack)
	}
	if _, ack, _, err := connect("KERBEROS", "carol", "pencil"); err == nil || ack == nil || ack.ReasonCode != 0x8C {
		t.Fatalf("unknown method: %v %+v", err, ack)
	}
}

// TestSCRAMReauthentication (MQTT 5.0 §4.12.1): a client that connected
// with SCRAM-SHA-256 re-authenticates with AUTH 0x19, gets AUTH 0x18 with
// server-first, answers AUTH 0x18, and gets AUTH 0x00 with a server proof
// it verifies; the connection goes on as the same user, several times
// over. A wrong password or another user closes the connection with
// DISCONNECT 0x87, another method with 0x8C, and AUTH on a connection
// that did not authenticate with a method with 0x82.
func TestSCRAMReauthentication(t *testing.T) {
	b := scramBroker(t)
	c, err := scramConnect(t, b.tcp, auth.SCRAMMethod, "carol", "pencil")
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	for i := range 2 {
		// paho's AuthResponse leaves out the Authentication Data: the
		// server proof is checked with the raw client below.
		if resp, _ := c.reauth(t, auth.SCRAMMethod, "carol", "pencil"); !resp.Success || resp.ReasonCode != 0 {
			t.Fatalf("re-authentication %d: %+v", i, resp)
		}
		pr, err := c.Publish(ctx5(t), &paho.Publish{Topic: "users/carol/x", QoS: 1, Payload: []byte("still carol")})
		if err != nil || pr.ReasonCode != 0 {
			t.Fatalf("publish after re-authentication %d: %v %+v", i, err, pr)
		}
	}
	// The same on the wire, checking the server's proof of each exchange.
	raw := rawOn(t, dial(t, b.tcp))
	exchange := func(first packet.Packet, sc *auth.SCRAMClient, done func() (packet.ReasonCode, []byte)) {
		t.Helper()
		raw.send(first)
		a, ok := raw.read().(*packet.Auth)
		if !ok || a.ReasonCode != packet.ContinueAuthentication || a.Properties.AuthenticationMethod != auth.SCRAMMethod {
			t.Fatalf("got %+v, want AUTH 0x18 with server-first", a)
		}
		final, err := sc.Final(a.Properties.AuthenticationData)
		if err != nil {
			t.Fatal(err)
		}
		raw.send(&packet.Auth{ReasonCode: packet.ContinueAuthentication,
			Properties: packet.Properties{AuthenticationMethod: auth.SCRAMMethod, AuthenticationData: final}})
		code, proof := done()
		if code != packet.Success {
			t.Fatalf("exchange ended with %s", code)
		}
		if err := sc.Verify(proof); err != nil {
			t.Fatalf("server proof: %v", err)
		}
	}
	sc := &auth.SCRAMClient{User: "carol", Password: "pencil"}
	exchange(&packet.Connect{Version: packet.V5, ClientID: "raw", CleanStart: true, KeepAlive: 30,
		Properties: packet.Properties{AuthenticationMethod: auth.SCRAMMethod, AuthenticationData: sc.First()}}, sc,
		func() (packet.ReasonCode, []byte) {
			ack, ok := raw.read().(*packet.Connack)
			if !ok {
				t.Fatalf("got %+v, want CONNACK", ack)
			}
			return ack.ReasonCode, ack.Properties.AuthenticationData
		})
	sc = &auth.SCRAMClient{User: "carol", Password: "pencil"}
	exchange(&packet.Auth{ReasonCode: packet.ReAuthenticate,
		Properties: packet.Properties{AuthenticationMethod: auth.SCRAMMethod, AuthenticationData: sc.First()}}, sc,
		func() (packet.ReasonCode, []byte) {
			a, ok := raw.read().(*packet.Auth)
			if !ok || a.Properties.AuthenticationMethod != auth.SCRAMMethod {
				t.Fatalf("got %+v, want AUTH 0x00 with the method", a)
			}
			return a.ReasonCode, a.Properties.AuthenticationData
		})
	if got := b.metric(t, "quire_mqtt_reauthentications_total", nil); got != 3 {
		t.Fatalf("reauthentications_total = %v, want 3", got)
	}
	// A second AUTH 0x18 after the exchange ended is out of turn.
	raw.send(&packet.Auth{ReasonCode: packet.ContinueAuthentication, Properties: packet.Properties{AuthenticationMethod: auth.SCRAMMethod}})
	if d, ok := raw.read().(*packet.Disconnect); !ok || d.ReasonCode != packet.ProtocolError {
		t.Fatalf("got %+v, want DISCONNECT 0x82", d)
	}

	for _, tc := range []struct {
		name, method, user, pass string
		want                     byte
	}{
		{"wrong password", auth.SCRAMMethod, "carol", "crayon", 0x87},
		{"another user", auth.SCRAMMethod, "dave", "ink", 0x87},
		{"another method", "KERBEROS", "carol", "pencil", 0x8C},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := scramConnect(t, b.tcp, auth.SCRAMMethod, "carol", "pencil")
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			resp, _ := c.reauth(t, tc.method, tc.user, tc.pass)
			if resp.Success || resp.ReasonCode != tc.want {
				t.Fatalf("got %+v, want DISCONNECT %#x", resp, tc.want)
			}
			waitClosed(t, c.Client)
		})
	}

	t.Run("no method at connect", func(t *testing.T) {
		b := startBroker(t, nil, nil)
		c := connect5(t, b.tcp, &paho.Connect{ClientID: "plain", CleanStart: true})
		resp, err := c.Authenticate(ctx5(t), &paho.Auth{ReasonCode: 0x19,
			Properties: &paho.AuthProperties{AuthMethod: auth.SCRAMMethod, AuthData: []byte("n,,n=carol,r=abc")}})
		if err != nil || resp.Success || resp.ReasonCode != 0x82 {
			t.Fatalf("got %+v %v, want DISCONNECT 0x82", resp, err)
		}
		waitClosed(t, c.Client)
	})
}

// waitClosed waits until the server has closed c's connection.
func waitClosed(t *testing.T, c *paho.Client) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection still open")
	}
}
