package mqtt

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/quiremq/quire/frontends/auth"
)

// scramAuther is paho's side of the SCRAM-SHA-256 exchange.
type scramAuther struct {
	t *testing.T
	c *auth.SCRAMClient
}

func (a *scramAuther) Authenticate(in *paho.Auth) *paho.Auth {
	final, err := a.c.Final(in.Properties.AuthData)
	if err != nil {
		a.t.Errorf("server-first: %v", err)
	}
	return &paho.Auth{ReasonCode: 0x18, Properties: &paho.AuthProperties{AuthMethod: auth.SCRAMMethod, AuthData: final}}
}

func (a *scramAuther) Authenticated() {}

// TestSCRAMEnhancedAuth: paho v5 authenticates with SCRAM-SHA-256 through
// CONNECT, AUTH, AUTH, CONNACK; the CONNACK carries a server proof the
// client verifies; the authenticated user is the one the ACL sees; a wrong
// password gets 0x86 and an unknown method 0x8C.
func TestSCRAMEnhancedAuth(t *testing.T) {
	cred, err := auth.NewSCRAMCredentials([]byte("pencil"), auth.DefaultSCRAMIterations)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := auth.NewSCRAM(map[string]string{"carol": cred.String()})
	if err != nil {
		t.Fatal(err)
	}
	acl, err := auth.NewACL([]auth.Rule{{Allow: true, Actions: auth.Publish | auth.Subscribe, Topics: []string{"users/%u/#"}}}, false)
	if err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, nil, func(o *Options) {
		o.SCRAM = sc
		o.ACL = acl
		o.Auth = &auth.Chain{} // no password users, no anonymous access
	})
	connect := func(method, user, pass string) (*paho.Client, *paho.Connack, *auth.SCRAMClient, error) {
		conn, err := net.Dial("tcp", b.tcp)
		if err != nil {
			t.Fatal(err)
		}
		sc := &auth.SCRAMClient{User: user, Password: pass}
		msgs := make(chan *paho.Publish, 4)
		c := paho.NewClient(paho.ClientConfig{Conn: conn, AuthHandler: &scramAuther{t: t, c: sc},
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				msgs <- pr.Packet
				return true, nil
			}}})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ack, err := c.Connect(ctx, &paho.Connect{ClientID: "c-" + user, KeepAlive: 30, CleanStart: true,
			Properties: &paho.ConnectProperties{AuthMethod: method, AuthData: sc.First()}})
		return c, ack, sc, err
	}
	c, ack, scl, err := connect(auth.SCRAMMethod, "carol", "pencil")
	if err != nil {
		t.Fatalf("SCRAM connect: %v (%+v)", err, ack)
	}
	defer c.Disconnect(&paho.Disconnect{})
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
