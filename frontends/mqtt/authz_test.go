package mqtt

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"

	"github.com/quiremq/quire/frontends/auth"
)

// authBroker runs a broker with users alice/wonderland and bob/builder,
// anonymous access off, and ACLs: everyone may publish and subscribe
// under users/%u/#; alice may also publish to alerts/# and subscribe to
// alerts/#; nothing else is allowed.
func authBroker(t *testing.T) *testBroker {
	t.Helper()
	hashes := map[string]string{}
	for u, p := range map[string]string{"alice": "wonderland", "bob": "builder"} {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		hashes[u] = string(h)
	}
	users, err := auth.NewUsers(hashes, auth.UsersOptions{})
	if err != nil {
		t.Fatal(err)
	}
	acl, err := auth.NewACL([]auth.Rule{
		{Allow: true, Actions: auth.Publish | auth.Subscribe, Topics: []string{"users/%u/#"}},
		{Allow: true, Actions: auth.Publish | auth.Subscribe, Username: "alice", Topics: []string{"alerts/#"}},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	return startBroker(t, nil, func(o *Options) {
		o.Auth = &auth.Chain{Steps: []auth.Authenticator{users}}
		o.ACL = acl
	})
}

// TestAuthPaho5: a wrong password gets CONNACK 0x86, an anonymous client
// 0x87, a will on a forbidden topic 0x87; a forbidden subscribe gets SUBACK
// 0x87 and a forbidden QoS 1 publish PUBACK 0x87, stores nothing and is
// counted; allowed traffic flows.
func TestAuthPaho5(t *testing.T) {
	b := authBroker(t)
	refused := func(cp *paho.Connect, want byte) {
		t.Helper()
		conn, err := net.Dial("tcp", b.tcp)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		ack, err := c.Connect(ctx5(t), cp)
		if err == nil || ack == nil || ack.ReasonCode != want {
			t.Fatalf("connect %q: ack %+v, err %v; want reason %#x", cp.ClientID, ack, err, want)
		}
	}
	refused(&paho.Connect{ClientID: "a1", KeepAlive: 30, Username: "alice", UsernameFlag: true, Password: []byte("nope"), PasswordFlag: true}, 0x86)
	refused(&paho.Connect{ClientID: "anon", KeepAlive: 30}, 0x87)
	refused(&paho.Connect{ClientID: "b1", KeepAlive: 30, Username: "bob", UsernameFlag: true, Password: []byte("builder"), PasswordFlag: true,
		WillMessage: &paho.WillMessage{Topic: "alerts/bob-died", Payload: []byte("x")}}, 0x87)

	alice := connect5(t, b.tcp, &paho.Connect{ClientID: "alice-1", Username: "alice", UsernameFlag: true, Password: []byte("wonderland"), PasswordFlag: true})
	bob := connect5(t, b.tcp, &paho.Connect{ClientID: "bob-1", Username: "bob", UsernameFlag: true, Password: []byte("builder"), PasswordFlag: true})
	sa, err := bob.Subscribe(ctx5(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: "users/bob/#", QoS: 1}, {Topic: "alerts/#", QoS: 1}, {Topic: "$share/g/users/alice/inbox", QoS: 1}}})
	if sa == nil { // paho also returns an error when any subscription failed
		t.Fatal(err)
	}
	if got := sa.Reasons; len(got) != 3 || got[0] != 1 || got[1] != 0x87 || got[2] != 0x87 {
		t.Fatalf("SUBACK reasons %x, want 01 87 87", got)
	}
	pr, err := bob.Publish(ctx5(t), &paho.Publish{Topic: "alerts/fire", QoS: 1, Payload: []byte("not from bob")})
	if err == nil && pr != nil && pr.ReasonCode != 0x87 {
		t.Fatalf("forbidden publish: PUBACK %#x", pr.ReasonCode)
	}
	if err != nil && (pr == nil || pr.ReasonCode != 0x87) {
		t.Fatalf("forbidden publish: %v (%+v)", err, pr)
	}
	if got := b.stored(t, "alerts/fire"); len(got) != 0 {
		t.Fatalf("a refused publish was stored: %q", got)
	}
	if n := b.metric(t, "quire_mqtt_messages_dropped_total", map[string]string{"reason": "not_authorized"}); n != 1 {
		t.Fatalf("dropped{not_authorized} = %v", n)
	}
	// Allowed: alice writes into bob's space? No — only her own.
	if pr, err := alice.Publish(ctx5(t), &paho.Publish{Topic: "users/alice/notes", QoS: 1, Payload: []byte("mine")}); err != nil || pr.ReasonCode != 0 {
		t.Fatalf("allowed publish: %v %+v", err, pr)
	}
	if _, err := bob.Publish(ctx5(t), &paho.Publish{Topic: "users/bob/inbox", QoS: 1, Payload: []byte("hello bob")}); err != nil {
		t.Fatal(err)
	}
	if m := bob.next(t); m.Topic != "users/bob/inbox" || string(m.Payload) != "hello bob" {
		t.Fatalf("got %s %q", m.Topic, m.Payload)
	}
}

// TestAuthPaho311: 3.1.1 clients get return code 4 (bad user name or
// password) and 5 (not authorized); a forbidden subscribe gets 0x80; a
// forbidden publish is acknowledged (3.1.1 cannot refuse one) but not
// delivered or stored.
func TestAuthPaho311(t *testing.T) {
	b := authBroker(t)
	url := "tcp://" + b.tcp
	cl := func(id, user, pass string) paho3.Client {
		return paho3.NewClient(paho3.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(user).
			SetPassword(pass).SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false))
	}
	for _, tc := range []struct{ user, pass, want string }{
		{"alice", "wrong", "bad user name or password"},
		{"", "", "not Authorized"},
	} {
		c := cl("x", tc.user, tc.pass)
		tok := c.Connect()
		tok.WaitTimeout(5 * time.Second)
		if tok.Error() == nil || !strings.Contains(strings.ToLower(tok.Error().Error()), strings.ToLower(tc.want)) {
			t.Fatalf("user %q: %v, want %q", tc.user, tok.Error(), tc.want)
		}
	}
	r := &received{}
	sub := cl("bob-3", "bob", "builder")
	ok(t, sub.Connect())
	defer sub.Disconnect(100)
	st := sub.SubscribeMultiple(map[string]byte{"users/bob/#": 1, "alerts/#": 1}, r.handler)
	ok(t, st)
	res := st.(*paho3.SubscribeToken).Result()
	if res["users/bob/#"] != 1 || res["alerts/#"] != 0x80 {
		t.Fatalf("SUBACK %v", res)
	}
	pub := cl("bob-4", "bob", "builder")
	ok(t, pub.Connect())
	defer pub.Disconnect(100)
	ok(t, pub.Publish("alerts/x", 1, false, "forbidden"))
	ok(t, pub.Publish("users/bob/x", 1, false, "fine"))
	msgs := r.wait(t, 1)
	time.Sleep(100 * time.Millisecond)
	if r.count() != 1 || string(msgs[0].Payload()) != "fine" {
		t.Fatalf("received %d messages, first %q", r.count(), msgs[0].Payload())
	}
	if got := b.stored(t, "alerts/x"); len(got) != 0 {
		t.Fatalf("stored %q", got)
	}
}

// TestAuthMosquittoClients: mosquitto_pub with a wrong password fails, with
// the right one succeeds.
func TestAuthMosquittoClients(t *testing.T) {
	if _, err := exec.LookPath("mosquitto_pub"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto_pub not installed (make test installs mosquitto-clients)")
		}
		t.Skip("mosquitto-clients not installed; run make test")
	}
	b := authBroker(t)
	host, port, _ := net.SplitHostPort(b.tcp)
	run := func(pass string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "mosquitto_pub", "-h", host, "-p", port, "-V", "5", "-q", "1",
			"-u", "alice", "-P", pass, "-t", "users/alice/m", "-m", "hi").CombinedOutput()
		if err != nil {
			return errors.New(string(out))
		}
		return nil
	}
	if err := run("wonderland"); err != nil {
		t.Fatalf("right password: %v", err)
	}
	if err := run("nope"); err == nil || !strings.Contains(strings.ToLower(err.Error()), "bad user name or password") {
		t.Fatalf("wrong password: %v", err)
	}
	if got := b.stored(t, "users/alice/m"); len(got) != 1 {
		t.Fatalf("stored %q", got)
	}
}
