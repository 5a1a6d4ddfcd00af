package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/internal/metrics"
	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/shard"
)

// named renames an engine.
type named struct {
	shard.Engine
	name string
}

func (n named) Name() string { return n.name }

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testConfig listens on ephemeral loopback ports with data in dir.
func testConfig(dir string) *config.Config {
	c := config.Default()
	c.DataDir = dir
	c.GRPC.Addr = "127.0.0.1:0"
	c.Admin.Addr = "127.0.0.1:0"
	c.Storage.Rules = []config.Rule{{Match: "sensors/#", Engine: "memory"}}
	c.MQTT.TCP = "127.0.0.1:0"
	c.MQTT.WS = "127.0.0.1:0"
	// A one-voter meta elects itself after one heartbeat timeout.
	c.Meta.HeartbeatTimeout = config.Duration(50 * time.Millisecond)
	c.Meta.ElectionTimeout = config.Duration(50 * time.Millisecond)
	c.Meta.LeaderLeaseTimeout = config.Duration(50 * time.Millisecond)
	c.Meta.LeaderWaitTimeout = config.Duration(10 * time.Second)
	return c
}

func newNode(t testing.TB, cfg *config.Config, logs io.Writer) *Node {
	t.Helper()
	if logs == nil {
		logs = io.Discard
		if os.Getenv("QUIRE_TEST_LOGS") != "" { // debugging a test: see the nodes' logs
			logs = os.Stderr
		}
	}
	n, err := New(Options{Config: cfg, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func startNode(t *testing.T, cfg *config.Config, logs io.Writer) *Node {
	t.Helper()
	n := newNode(t, cfg, logs)
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Stop(context.Background()) })
	return n
}

func healthCheck(t *testing.T, addr string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return 0, err
	}
	return resp.Status, nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestNodeStartStop(t *testing.T) {
	dir := t.TempDir()
	logs := &syncBuffer{}
	n := newNode(t, testConfig(dir), logs)

	// Before Start nothing is ready.
	if rd := n.Readiness(); rd.Ready || len(rd.NotReady) != 5 {
		t.Errorf("readiness before start = %+v", rd)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	admin := "http://" + n.AdminAddr().String()
	if code, body := get(t, admin+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %s", code, body)
	}
	if st, err := healthCheck(t, n.GRPCAddr().String()); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("grpc health = %v, %v; want SERVING", st, err)
	}
	c, err := adminapi.NewClient(n.AdminAddr().String()).Cluster(context.Background())
	if err != nil || c.MetaLeader != 1 || c.MetaMode != "raft" || c.Stale || len(c.Nodes) != 1 || c.Nodes[0].State != "up" ||
		c.Nodes[0].GRPCAddr != n.GRPCAddr().String() || c.Nodes[0].AdminAddr != n.AdminAddr().String() ||
		c.Nodes[0].Addr != "127.0.0.1:1228" || !c.Nodes[0].Voter || !slices.Equal(c.Nodes[0].Roles, []string{"meta", "bookie", "broker"}) {
		t.Errorf("cluster = %+v, %v", c, err)
	}
	// The data dir is created and locked.
	if _, err := os.Stat(filepath.Join(dir, "LOCK")); err != nil {
		t.Error(err)
	}
	// Meta lives under data_dir/meta; topics are in meta, not in a file.
	for _, f := range []string{"meta/raft", "meta/snapshots"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "topics.json")); !os.IsNotExist(err) {
		t.Errorf("topics.json exists with meta running: %v", err)
	}
	// The node says what it waits for and what it does not serve.
	for _, want := range []string{"waiting for a meta leader", "meta leader elected", "node registered in meta",
		"configured listeners are NOT served", "mqtt.quic=:14567", "mqtt.tls=:8883", "kafka.addr=:9092",
		"MQTT listener serving", "node ready"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q", want)
		}
	}

	grpcAddr := n.GRPCAddr().String()
	if err := n.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Components stopped in reverse order.
	var order []string
	for _, m := range regexp.MustCompile(`msg="component (started|stopped)" component=(\w+)`).FindAllStringSubmatch(logs.String(), -1) {
		order = append(order, m[1]+" "+m[2])
	}
	if want := "started grpc,started admin,started meta,started bookie,started broker,stopped broker,stopped bookie,stopped meta,stopped admin,stopped grpc"; strings.Join(order, ",") != want {
		t.Errorf("start/stop order = %q, want %q", order, want)
	}
	for _, c := range n.Readiness().Components {
		if c.State != "stopped" {
			t.Errorf("component %s is %s after Stop", c.Name, c.State)
		}
	}
	if _, err := healthCheck(t, grpcAddr); err == nil {
		t.Error("gRPC still answers after Stop")
	}
	if _, err := http.Get(admin + "/healthz"); err == nil {
		t.Error("admin still answers after Stop")
	}
	if err := n.Stop(context.Background()); err != nil {
		t.Errorf("second Stop = %v", err)
	}
	// The lock is released: another node can use the directory.
	startNode(t, testConfig(dir), nil)
}

func TestNodeDataDirLocked(t *testing.T) {
	dir := t.TempDir()
	startNode(t, testConfig(dir), nil)
	n2 := newNode(t, testConfig(dir), nil)
	err := n2.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "in use by another quire node") {
		t.Fatalf("second node on the same data_dir: %v", err)
	}
}

func TestNodeStartFailureRollsBack(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.Admin.Addr = busy.Addr().String()
	n := newNode(t, cfg, nil)
	err = n.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "start admin: listen on [admin] addr") {
		t.Fatalf("Start = %v", err)
	}
	states := map[string]string{}
	for _, c := range n.Readiness().Components {
		states[c.Name] = c.State
	}
	if states["grpc"] != "stopped" || states["admin"] != "failed" || states["broker"] != "pending" {
		t.Errorf("states after failed start = %v", states)
	}
	if n.GRPCAddr() != nil {
		if _, err := healthCheck(t, n.GRPCAddr().String()); err == nil {
			t.Error("gRPC server left running after a failed start")
		}
	}
	// The lock was released.
	startNode(t, testConfig(dir), nil)
}

func TestNodeRejectsInvalidConfig(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.MetaAddrs = []string{"2@a:1228", "3@b:1228"}
	_, err := New(Options{Config: cfg})
	if !errors.Is(err, config.ErrInvalid) || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "this node (node_id = 1) is not one of the meta voters (node ids 2, 3)") {
		t.Errorf("New = %v", err)
	}
}

func TestNodeTopicsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	n := startNode(t, testConfig(dir), nil)
	cl := adminapi.NewClient(n.AdminAddr().String())
	if tp, err := cl.CreateTopic(ctx, adminapi.CreateTopicRequest{Name: "orders", Partitions: 2}); err != nil || tp.Engine != "file" {
		t.Fatalf("create orders = %+v, %v", tp, err)
	}
	if tp, err := cl.CreateTopic(ctx, adminapi.CreateTopicRequest{Name: "sensors/temp"}); err != nil || tp.Engine != "memory" {
		t.Fatalf("create sensors/temp = %+v, %v", tp, err)
	}
	r := n.broker.topics()
	s, err := r.Shard("orders", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, []shard.Record{{Value: []byte("a")}, {Value: []byte("b")}}); err != nil {
		t.Fatal(err)
	}
	if s, err = r.Shard("sensors/temp", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, []shard.Record{{Value: []byte("a")}}); err != nil {
		t.Fatal(err)
	}
	if err := n.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	n2 := startNode(t, testConfig(dir), nil)
	list, err := adminapi.NewClient(n2.AdminAddr().String()).Topics(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("after restart: %+v, %v", list, err)
	}
	if o := list[0]; o.Name != "orders" || o.Engine != "file" || o.Shards[1].High != 2 || o.Shards[1].Error != "" {
		t.Errorf("orders after restart = %+v (file data must survive)", o)
	}
	if m := list[1]; m.Name != "sensors/temp" || m.Engine != "memory" || m.Shards[0].High != 0 || m.Shards[0].Error != "" {
		t.Errorf("sensors/temp after restart = %+v (memory topic kept, data gone)", m)
	}
}

func TestNodeMetrics(t *testing.T) {
	n := startNode(t, testConfig(t.TempDir()), nil)
	ctx := context.Background()
	if _, err := adminapi.NewClient(n.AdminAddr().String()).CreateTopic(ctx, adminapi.CreateTopicRequest{Name: "t", Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	code, body := get(t, "http://"+n.AdminAddr().String()+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		"go_goroutines ",
		"process_cpu_seconds_total ",
		`quire_node_component_state{component="broker",state="running"} 1`,
		`quire_node_component_state{component="broker",state="pending"} 0`,
		`quire_node_component_start_duration_seconds{component="grpc"}`,
		"quire_node_ready 1",
		`quire_node_info{cluster="quire",commit=`,
		"quire_broker_topics 1",
		"quire_broker_partitions 4",
		"quire_memory_shards ",
		"quire_file_",
		`quire_node_component_state{component="bookie",state="running"} 1`,
		"quire_bookie_adds_total ",
		"quire_bookie_journal_syncs_total ",
		"quire_bookie_rpc_add_streams 0",
		`quire_admin_http_requests_total{code="201",path="POST /api/v1/topics"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestNodeRun(t *testing.T) {
	n := newNode(t, testConfig(t.TempDir()), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx, 5*time.Second) }()
	// Wait for readiness through the public API.
	deadline := time.Now().Add(10 * time.Second)
	for !n.Readiness().Ready {
		if time.Now().After(deadline) {
			t.Fatal("node not ready after 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestNodeRunCanceledWhileStarting(t *testing.T) {
	dir := t.TempDir()
	n := newNode(t, testConfig(dir), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.Run(ctx, time.Second); err != nil {
		t.Errorf("Run with a canceled context = %v, want a clean stop", err)
	}
	for _, c := range n.Readiness().Components {
		if c.State == "running" {
			t.Errorf("component %s still running", c.Name)
		}
	}
	startNode(t, testConfig(dir), nil) // the lock was released
}

// config.Engines must list exactly the engines the node opens.
func TestEnginesMatchConfig(t *testing.T) {
	cfg := testConfig(t.TempDir())
	// The journal engine does no I/O until a shard is used: a meta.KV that
	// is never called will do.
	es, err := openEngines(cfg, vfs.Default, cfg.DataDir, metrics.NewRegistry(), slog.New(slog.DiscardHandler), struct{ meta.KV }{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for name, e := range es {
		if e.Name() != name {
			t.Errorf("engine %q says its name is %q", name, e.Name())
		}
		names = append(names, name)
		e.Close()
	}
	slices.Sort(names)
	var always []string
	for _, e := range config.Engines {
		if !slices.Contains(onDemandEngines, e) {
			always = append(always, e)
		}
	}
	if !slices.Equal(names, always) {
		t.Errorf("node opens %v, config.Engines without the on-demand ones = %v", names, always)
	}
	for _, e := range onDemandEngines {
		if !slices.Contains(config.Engines, e) {
			t.Errorf("on-demand engine %q is not in config.Engines", e)
		}
	}
	for e := range ephemeralEngines {
		if !slices.Contains(names, e) {
			t.Errorf("ephemeral engine %q is not opened", e)
		}
	}
}

func TestNewLogger(t *testing.T) {
	var b bytes.Buffer
	l, err := NewLogger(&b, "warn", "json")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown", "k", 1)
	if s := b.String(); strings.Contains(s, "hidden") || !strings.Contains(s, `"msg":"shown","k":1`) {
		t.Errorf("json log = %q", s)
	}
	if _, err := NewLogger(&b, "loud", "text"); err == nil {
		t.Error("bad level accepted")
	}
	if _, err := NewLogger(&b, "info", "xml"); err == nil {
		t.Error("bad format accepted")
	}
}
