package node

import (
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"

	"github.com/quiremq/quire/internal/config"
)

// TestNodeMQTTAuth: [mqtt] users, allow_anonymous and [[mqtt.acl]] from the
// config govern a running node: a wrong password and an anonymous client
// are refused, a user publishes only where the ACL allows, and /metrics
// counts the decisions.
func TestNodeMQTTAuth(t *testing.T) {
	cfg := testConfig(t.TempDir())
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MQTT.AllowAnonymous = false
	cfg.MQTT.Users = []config.MQTTUser{{Name: "alice", PasswordHash: string(h)}}
	cfg.MQTT.ACLDefault = "deny"
	cfg.MQTT.ACL = []config.ACLRule{{Permission: "allow", Action: "all", Topics: []string{"users/%u/#"}}}
	n := startNode(t, cfg, nil)
	url := "tcp://" + n.MQTTAddr("tcp").String()
	connect := func(id, user, pass string) (paho3.Client, error) {
		c := paho3.NewClient(paho3.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(user).SetPassword(pass).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
		tok := c.Connect()
		tok.WaitTimeout(5 * time.Second)
		if tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(50) })
		}
		return c, tok.Error()
	}
	if _, err := connect("x", "alice", "wrong"); err == nil || !strings.Contains(err.Error(), "bad user name or password") {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := connect("y", "", ""); err == nil || !strings.Contains(err.Error(), "not Authorized") {
		t.Fatalf("anonymous: %v", err)
	}
	c, err := connect("alice-1", "alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 4)
	tok := c.SubscribeMultiple(map[string]byte{"users/alice/#": 1, "users/bob/#": 1}, func(_ paho3.Client, m paho3.Message) { got <- m.Topic() })
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if res := tok.(*paho3.SubscribeToken).Result(); res["users/alice/#"] != 1 || res["users/bob/#"] != 0x80 {
		t.Fatalf("SUBACK %v", res)
	}
	for _, topic := range []string{"users/bob/x", "users/alice/x"} {
		if tok := c.Publish(topic, 1, false, "m"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	select {
	case topic := <-got:
		if topic != "users/alice/x" {
			t.Fatalf("delivered %s", topic)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing delivered")
	}
	code, body := get(t, "http://"+n.AdminAddr().String()+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`quire_auth_decisions_total{protocol="mqtt",result="allow"} 1`,
		`quire_auth_decisions_total{protocol="mqtt",result="deny"} 2`,
		`quire_acl_denied_total{action="publish",protocol="mqtt"} 1`,
		`quire_acl_denied_total{action="subscribe",protocol="mqtt"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
