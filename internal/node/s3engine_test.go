package node

import (
	"context"
	"fmt"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/internal/config"
)

// TestNodeS3Engine: a rule routes telemetry/# to the s3 engine on a test
// MinIO; QoS 1 messages published over MQTT are acknowledged once their
// objects are written and indexed, the objects are in the bucket under the
// node's prefix, and every message reads back, also after a restart.
func TestNodeS3Engine(t *testing.T) {
	srv := s3test.StartMinIO(t)
	cfg := testConfig(t.TempDir())
	cfg.Storage.Rules = append(cfg.Storage.Rules, config.Rule{Match: "telemetry/#", Engine: "s3"})
	cfg.Storage.S3 = config.S3Storage{Endpoint: srv.Endpoint, Bucket: "quire-topics", Region: srv.Region,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, Prefix: "t",
		FlushInterval: config.Duration(5 * time.Millisecond), FlushBytes: 64 << 10}
	n := startNode(t, cfg, nil)
	c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + n.MQTTAddr("tcp").String()).SetClientID("dev").
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	want := map[string]bool{}
	for i := range 40 {
		payload := fmt.Sprintf("reading-%03d", i)
		want[payload] = true
		if tok := c.Publish(fmt.Sprintf("telemetry/dev%d", i%4), 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	c.Disconnect(50)
	st, err := s3store.Open(t.Context(), srv.Options("quire-topics"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := st.List(t.Context(), "t/node-1/s3/")
	if err != nil || len(objs) == 0 {
		t.Fatalf("objects under t/node-1/s3/: %d, %v", len(objs), err)
	}
	checkEngine(t, n, "s3", want)
	if err := n.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg, nil)
	checkEngine(t, n, "s3", want)
}
