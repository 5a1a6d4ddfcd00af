package node

import (
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/internal/config"
)

// TestHybridExample starts a node on config/hybrid.example.toml (pointed at
// a test MinIO, on free ports) and writes to and reads from a topic of
// every engine it routes to.
func TestHybridExample(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "..", "config", "hybrid.example.toml")
	cfg, err := config.Load(path, config.Overrides{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("hybrid example: %v", err)
	}
	srv := s3test.StartMinIO(t)
	// The example's storage on a test node (free ports, fast timeouts).
	hybrid := cfg
	cfg = testConfig(hybrid.DataDir)
	cfg.Storage = hybrid.Storage
	addr := freeAddrs(t, 1)[0] // the bookie's address is its meta address
	cfg.GRPC.Addr, cfg.MetaAddrs = addr, []string{"1@" + addr}
	cfg.Storage.S3.Endpoint, cfg.Storage.S3.AccessKey, cfg.Storage.S3.SecretKey = srv.Endpoint, srv.AccessKey, srv.SecretKey
	var logs syncBuffer
	n := startNode(t, cfg, &logs)
	defer func() {
		if t.Failed() {
			t.Logf("node logs:\n%s", logs.String())
		}
	}()
	c := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + n.MQTTAddr("tcp").String()).SetClientID("hybrid").
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	for _, tc := range []struct{ topic, engine string }{
		{"sensors/t1", "memory"}, {"orders/eu", "journal"}, {"archive/2026", "s3"}, {"logs/app", "file"}, {"misc/x", "file"},
	} {
		want := map[string]bool{}
		for i := range 5 {
			p := fmt.Sprintf("%s-%d", tc.topic, i)
			want[p] = true
			if tok := c.Publish(tc.topic, 1, false, p); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("publish to %s: %v", tc.topic, tok.Error())
			}
		}
		checkEngine(t, n, tc.engine, want)
	}
}
