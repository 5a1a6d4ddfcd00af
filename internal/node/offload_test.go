package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/internal/config"
)

// TestNodeOffloadToMinIO: a rule with offload = "s3" against a test MinIO;
// messages published over MQTT land in file shards whose sealed segments
// are offloaded (objects in the bucket, locations in meta) and deleted
// locally; every message reads back from offset 0, also after a restart.
func TestNodeOffloadToMinIO(t *testing.T) {
	srv := s3test.StartMinIO(t)
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.Storage.File.SegmentBytes = config.MinSegmentBytes
	cfg.Storage.File.OffloadDeleteLag = 0
	cfg.Storage.Rules = append(cfg.Storage.Rules, config.Rule{Match: "orders/#", Engine: "file", Offload: "s3"})
	cfg.Storage.S3 = config.S3Storage{Endpoint: srv.Endpoint, Bucket: "quire-offload", Region: srv.Region,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, Prefix: "t"}
	n := startNode(t, cfg, nil)

	want := publishOrders(t, n, 80, "x")

	st, err := s3store.Open(t.Context(), srv.Options("quire-offload"))
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the file shards keep only their active segment locally.
	fileDir := filepath.Join(n.DataDir(), "file")
	deadline := time.Now().Add(30 * time.Second)
	for {
		logs, shards := countLocalSegments(t, fileDir)
		objs, err := st.List(t.Context(), "t/node-1/file/")
		if err != nil {
			t.Fatal(err)
		}
		if shards > 0 && logs == shards && len(objs) > 0 {
			t.Logf("%d file shards, %d objects offloaded", shards, len(objs))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("offload did not finish: %d local segments in %d shards, %d objects", logs, shards, len(objs))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, body := get(t, "http://"+n.AdminAddr().String()+"/metrics"); !strings.Contains(body, "quire_offload_segments_total") {
		t.Fatal("/metrics has no quire_offload_segments_total")
	}
	checkOrders(t, n, want)

	// After a restart the offloaded segments are found through meta.
	if err := n.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg, nil)
	checkOrders(t, n, want)
}

// countLocalSegments counts segment files and shard directories of the
// file engine's directory.
func countLocalSegments(t *testing.T, dir string) (logs, shards int) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ents {
		if !d.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, d.Name()))
		if err != nil {
			t.Fatal(err)
		}
		shards++
		for _, f := range files {
			if strings.HasSuffix(f.Name(), ".log") {
				logs++
			}
		}
	}
	return logs, shards
}

// checkOrders reads every file shard from offset 0 and checks that each
// published payload is there exactly once.
func checkOrders(t *testing.T, n *Node, want map[string]bool) {
	t.Helper()
	checkEngine(t, n, "file", want)
}

// checkEngine reads every shard of engine from offset 0 and checks that
// each payload of want is there exactly once.
func checkEngine(t *testing.T, n *Node, engine string, want map[string]bool) {
	t.Helper()
	e := n.broker.engines[engine]
	names, err := e.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, name := range names {
		s, err := e.Open(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range readShard(t, s) {
			if want[string(r.Value)] {
				seen[string(r.Value)]++
			}
		}
	}
	for p := range want {
		if seen[p] != 1 {
			t.Fatalf("payload %.12s... read %d times, want once", p, seen[p])
		}
	}
}

// A node whose journal topics offload to MinIO (a rule with offload =
// "s3", ledgers rolled every 8 entries, no delete lag): MQTT publishes land
// in journal ledgers, the closed ones move to the bucket and off the
// bookie, and every message reads back exactly once from offset 0, before
// and after a restart.
func TestNodeJournalOffloadToMinIO(t *testing.T) {
	srv := s3test.StartMinIO(t)
	addr := freeAddrs(t, 1)[0]
	cfg := testConfig(t.TempDir())
	cfg.GRPC.Addr = addr
	cfg.MetaAddrs = []string{"1@" + addr}
	cfg.Storage.Journal.LedgerEntries = 8
	cfg.Storage.Journal.OffloadDeleteLag = 0
	cfg.Storage.Rules = []config.Rule{{Match: "orders/#", Engine: "journal", AckQuorum: 1, Offload: "s3"}}
	cfg.Storage.S3 = config.S3Storage{Endpoint: srv.Endpoint, Bucket: "quire-offload", Region: srv.Region,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, Prefix: "t"}
	n := startNode(t, cfg, nil)

	want := publishOrders(t, n, 80, "y")

	st, err := s3store.Open(t.Context(), srv.Options("quire-offload"))
	if err != nil {
		t.Fatal(err)
	}
	// 80 messages in ledgers of 8 entries (or fewer: one append may carry
	// several messages): at least a few closed ledgers go to the bucket.
	deadline := time.Now().Add(90 * time.Second)
	for {
		objs, err := st.List(t.Context(), "t/journal/")
		if err != nil {
			t.Fatal(err)
		}
		_, body := get(t, "http://"+n.AdminAddr().String()+"/metrics")
		if len(objs) >= 2 && strings.Contains(body, "quire_journal_engine_offloaded_ledgers_total") &&
			!strings.Contains(body, "quire_journal_engine_offloaded_ledgers_total 0\n") {
			t.Logf("%d journal objects offloaded", len(objs))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal offload did not happen: %d objects", len(objs))
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkEngine(t, n, "journal", want)

	if err := n.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	n = startNode(t, cfg, nil)
	checkEngine(t, n, "journal", want)
}

// publishOrders publishes count QoS 1 messages to orders/eu through n,
// padded with pad, and returns their payloads.
func publishOrders(t *testing.T, n *Node, count int, pad string) map[string]bool {
	t.Helper()
	c := mqttClient(t, n, "pub", true, nil)
	defer c.Disconnect(50)
	want := map[string]bool{}
	for i := range count {
		payload := fmt.Sprintf("order-%03d-%s", i, strings.Repeat(pad, 100))
		want[payload] = true
		if tok := c.Publish("orders/eu", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	return want
}

// offloadPolicy: a topic's shard follows the first rule matching its topic
// over its engine's section; an MQTT shard of an engine offloads when the
// section or any rule of that engine does, with the shortest delete lag.
func TestOffloadPolicy(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.Storage.File.OffloadDeleteLag = config.Duration(2 * time.Hour)
	cfg.Storage.Journal.Offload, cfg.Storage.Journal.OffloadDeleteLag = "s3", config.Duration(3*time.Hour)
	cfg.Storage.Rules = []config.Rule{
		{Match: "orders/#", Engine: "file", Offload: "s3", OffloadDeleteLag: config.Duration(time.Minute)},
		{Match: "keep/#", Engine: "journal", Offload: "none"},
		{Match: "fast/#", Engine: "journal", OffloadDeleteLag: config.Duration(5 * time.Minute)},
	}
	for _, tc := range []struct {
		engine, shard string
		on            bool
		lag           time.Duration
	}{
		{"file", "orders/eu/3", true, time.Minute},
		{"file", "other/0", false, 2 * time.Hour},
		{"file", "mqtt/file/7", true, time.Minute},
		{"journal", "other/0", true, 3 * time.Hour},
		{"journal", "keep/a/0", false, 3 * time.Hour},
		{"journal", "fast/x/12", true, 5 * time.Minute},
		{"journal", "mqtt/journal/0", true, 5 * time.Minute}, // fast/# inherits s3 with a shorter lag
	} {
		if on, lag := offloadPolicy(cfg, tc.engine, tc.shard); on != tc.on || lag != tc.lag {
			t.Errorf("offloadPolicy(%s, %q) = %v, %v; want %v, %v", tc.engine, tc.shard, on, lag, tc.on, tc.lag)
		}
	}
}
