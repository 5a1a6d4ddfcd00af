package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/internal/node/topics"
	"github.com/quiremq/quire/internal/testaddr"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/bookie"
)

// freeAddrs returns n loopback addresses whose ports are free right now,
// below the ephemeral range: nodes restart on them (testaddr.Loopback).
func freeAddrs(t testing.TB, n int) []string { return testaddr.Loopback(t, n) }

// A node whose meta has no quorum does not become ready: Start waits for a
// leader, /readyz answers 503 naming meta meanwhile, and Start fails with
// a clear error after [meta] leader_wait_timeout.
func TestNodeReadinessWaitsForLeader(t *testing.T) {
	addrs := freeAddrs(t, 3)
	cfg := testConfig(t.TempDir())
	cfg.GRPC.Addr = addrs[0]
	cfg.Admin.Addr = addrs[2]
	cfg.MetaAddrs = []string{"1@" + addrs[0], "2@" + addrs[1]} // node 2 never starts
	cfg.Meta.LeaderWaitTimeout = config.Duration(1500 * time.Millisecond)
	logs := &syncBuffer{}
	n := newNode(t, cfg, logs)
	errc := make(chan error, 1)
	go func() { errc <- n.Start(context.Background()) }()

	var code int
	var body string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		resp, err := http.Get("http://" + addrs[2] + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			code, body = resp.StatusCode, string(b)
			if strings.Contains(body, `"meta"`) && strings.Contains(body, `"starting"`) {
				break
			}
		}
		if time.Now().After(deadline) {
			break
		}
	}
	if code != 503 || !strings.Contains(body, `"meta"`) || !strings.Contains(body, `"starting"`) {
		t.Errorf("/readyz while meta waits for a leader = %d %s", code, body)
	}
	if c, err := adminapi.NewClient(addrs[2]).Cluster(context.Background()); err != nil || c.MetaLeader != 0 || !c.Stale {
		t.Errorf("cluster without a leader = %+v, %v", c, err)
	}
	var err error
	select {
	case err = <-errc:
	case <-time.After(10 * time.Second):
		t.Fatal("Start did not give up waiting for a leader")
	}
	if err == nil || !strings.Contains(err.Error(), "start meta: no meta leader after 1.5s") || !strings.Contains(err.Error(), "2 of the 2 voters") {
		t.Fatalf("Start = %v", err)
	}
	if !strings.Contains(logs.String(), "waiting for a meta leader") {
		t.Errorf("logs lack the wait:\n%s", logs)
	}
	// Everything was released: the data dir and meta's store are unlocked.
	l, err := vfs.Default.Lock(filepath.Join(cfg.DataDir, "LOCK"))
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "meta", "raft")); err != nil {
		t.Error(err)
	}
}

// A topics.json of an older build is copied into meta at the first start
// and renamed; later starts read meta only.
func TestNodeMigratesTopicsJSON(t *testing.T) {
	dir := t.TempDir()
	fs, err := topics.OpenFileStore(vfs.Default, filepath.Join(dir, "topics.json"))
	if err != nil {
		t.Fatal(err)
	}
	old := topics.Topic{Name: "sensors/old", Engine: "memory", Partitions: 2, CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	if err := fs.Create(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		n := startNode(t, testConfig(dir), nil)
		list, err := adminapi.NewClient(n.AdminAddr().String()).Topics(context.Background())
		if err != nil || len(list) != 1 || list[0].Name != "sensors/old" || list[0].Partitions != 2 || !list[0].CreatedAt.Equal(old.CreatedAt) ||
			list[0].Node != 1 || list[0].Shards[1].Error != "" {
			t.Errorf("start %d: topics = %+v, %v", i, list, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "topics.json")); !os.IsNotExist(err) {
			t.Errorf("start %d: topics.json still there: %v", i, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "topics.json.migrated")); err != nil {
			t.Errorf("start %d: %v", i, err)
		}
		if err := n.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// clusterConfigs returns the configs of a three-node cluster on loopback.
func clusterConfigs(t testing.TB) []*config.Config {
	addrs := freeAddrs(t, 3)
	var voters []string
	for i, a := range addrs {
		voters = append(voters, fmt.Sprintf("%d@%s", i+1, a))
	}
	var cfgs []*config.Config
	for i, a := range addrs {
		c := testConfig(t.TempDir())
		c.NodeID = uint64(i + 1)
		c.GRPC.Addr = a
		c.MetaAddrs = voters
		// Short, but long enough that the race detector's slowdown does
		// not make leadership flap.
		c.Meta.HeartbeatTimeout = config.Duration(500 * time.Millisecond)
		c.Meta.ElectionTimeout = config.Duration(500 * time.Millisecond)
		c.Meta.LeaderLeaseTimeout = config.Duration(250 * time.Millisecond)
		c.Meta.NodeLeaseTTL = config.Duration(2 * time.Second)
		cfgs = append(cfgs, c)
	}
	return cfgs
}

// Three in-process nodes form one meta cluster: each lists every node, a
// topic created through one is listed by all (its shards on the node it
// was created through), a delete through another node removes the shards
// on the host, and a node whose data_dir was wiped is refused by its
// bookie (the cookie is in meta, which the other nodes kept).
func TestNodeThreeNodeCluster(t *testing.T) {
	ctx := context.Background()
	var cfgs []*config.Config
	nodes := make([]*Node, 3)
	for try := 0; ; try++ {
		cfgs = clusterConfigs(t)
		errc := make(chan error, 3)
		for i, c := range cfgs {
			nodes[i] = newNode(t, c, nil)
			go func() { errc <- nodes[i].Start(ctx) }()
		}
		var errs []error
		for range 3 {
			if err := <-errc; err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) == 0 {
			break
		}
		for _, n := range nodes {
			n.Stop(ctx)
		}
		// A port picked as free may have been taken since: pick again.
		if err := errors.Join(errs...); try == 2 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		t.Cleanup(func() { n.Stop(context.Background()) })
	}
	cl := func(i int) *adminapi.Client { return adminapi.NewClient(nodes[i].AdminAddr().String()) }

	for i := range nodes {
		c, err := cl(i).Cluster(ctx)
		if err != nil || len(c.Nodes) != 3 || c.MetaLeader == 0 || c.MetaMode != "raft" {
			t.Fatalf("node %d: cluster = %+v, %v", i+1, c, err)
		}
		for j, nd := range c.Nodes {
			if nd.ID != uint64(j+1) || nd.State != "up" || !nd.Voter || nd.GRPCAddr != cfgs[j].GRPC.Addr {
				t.Errorf("node %d sees %+v", i+1, nd)
			}
		}
	}

	if _, err := cl(0).CreateTopic(ctx, adminapi.CreateTopicRequest{Name: "orders", Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl(1).CreateTopic(ctx, adminapi.CreateTopicRequest{Name: "orders"}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("create of the same topic through another node: %v", err)
	}
	for i := range nodes {
		list, err := cl(i).Topics(ctx)
		if err != nil || len(list) != 1 || list[0].Name != "orders" || list[0].Node != 1 {
			t.Fatalf("node %d: topics = %+v, %v", i+1, list, err)
		}
		want := uint64(1)
		if i == 0 {
			want = 0 // hosted here
		}
		if p := list[0].Shards[1]; p.Node != want || p.Error != "" {
			t.Errorf("node %d: partition = %+v", i+1, p)
		}
	}
	if _, err := nodes[0].broker.topics().Shard("orders", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[1].broker.topics().Shard("orders", 1); err == nil {
		t.Error("node 2 opened a shard hosted by node 1")
	}
	// Delete through node 3: node 1 deletes its shards when it sees it.
	if err := cl(2).DeleteTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		names, _ := nodes[0].broker.engines["file"].List(ctx)
		if len(names) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 1 still holds %v after the topic was deleted through node 3", names)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Node 3 stops: the others show it down. Its data_dir is wiped: at
	// restart meta catches up from the others and the bookie refuses.
	if err := nodes[2].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// (It revoked its lease; if it led, the others elect a new leader first.)
	for deadline := time.Now().Add(5 * time.Second); ; {
		c, err := cl(0).Cluster(ctx)
		if err == nil && !c.Stale && c.Nodes[2].State == "down" && c.Nodes[0].State == "up" && c.MetaLeader != 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after node 3 stopped: %+v, %v", c, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.RemoveAll(cfgs[2].DataDir); err != nil {
		t.Fatal(err)
	}
	n3 := newNode(t, cfgs[2], nil)
	err := n3.Start(ctx)
	if !errors.Is(err, bookie.ErrCookieMismatch) || !strings.Contains(err.Error(), "start bookie") {
		t.Fatalf("start of node 3 on a wiped data_dir: %v, want a cookie mismatch", err)
	}
}
