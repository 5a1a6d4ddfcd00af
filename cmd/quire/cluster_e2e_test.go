package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/meta"
)

// clusterNode is one `quire start` process of a cluster of them; its
// bookie's id is its grpc address, tcp its MQTT listener's (when its
// config enables it).
type clusterNode struct {
	id               int
	dir, cfg         string
	grpc, admin, tcp string
	p                *proc
	killed           bool
}

// Raft timing of the cluster tests: short, so that a failover takes about a
// second; doubled for the race-detector build.
func clusterTiming() (election, leaseTTL time.Duration) {
	election, leaseTTL = 300*time.Millisecond, 2*time.Second
	if raceEnabled {
		election, leaseTTL = 2*election, 2*leaseTTL
	}
	return election, leaseTTL
}

// noMQTT is the config tail of nodes without MQTT listeners.
const noMQTT = `[mqtt]
tcp = ""
tls = ""
ws = ""
wss = ""
quic = ""
`

// startCluster starts a three-node cluster without MQTT listeners.
func startCluster(t *testing.T) []*clusterNode {
	return startNodes(t, "three", 3, func(*clusterNode) string { return noMQTT })
}

// startNodes writes n configs of cluster name, every node a meta voter
// (the same meta_addrs) with the short Raft timing, each followed by
// tail(node) (more sections), starts the n processes at once and returns
// when all are ready.
func startNodes(t *testing.T, name string, n int, tail func(*clusterNode) string) []*clusterNode {
	t.Helper()
	dir := t.TempDir()
	addrs := freeAddrs(t, 3*n)
	election, ttl := clusterTiming()
	var voters []string
	for i := range n {
		voters = append(voters, fmt.Sprintf("%q", fmt.Sprintf("%d@%s", i+1, addrs[3*i])))
	}
	var nodes []*clusterNode
	for i := range n {
		cn := &clusterNode{id: i + 1, dir: dir, grpc: addrs[3*i], admin: addrs[3*i+1], tcp: addrs[3*i+2]}
		cn.cfg = writeConfig(t, dir, fmt.Sprintf("node%d.toml", cn.id), fmt.Sprintf(`
node_id = %d
cluster_name = %q
data_dir = %q
meta_addrs = [%s]
[meta]
heartbeat_timeout = %q
election_timeout = %q
leader_lease_timeout = %q
node_lease_ttl = %q
leader_wait_timeout = "30s"
[grpc]
addr = %q
[admin]
addr = %q
`, cn.id, name, filepath.Join(dir, fmt.Sprintf("data%d", cn.id)), strings.Join(voters, ", "),
			election.String(), election.String(), (election/2).String(), ttl.String(), cn.grpc, cn.admin)+tail(cn))
		nodes = append(nodes, cn)
	}
	for _, cn := range nodes {
		cn.p = startQuire(t, dir, "start", "--config", cn.cfg)
	}
	for _, cn := range nodes {
		cn.p.waitReady(t, cn.admin)
	}
	return nodes
}

func clusterOf(t *testing.T, admin string) adminapi.Cluster {
	t.Helper()
	code, body := httpGet(t, "http://"+admin+"/api/v1/cluster")
	var c adminapi.Cluster
	if code != 200 || json.Unmarshal([]byte(body), &c) != nil {
		t.Fatalf("GET /api/v1/cluster on %s = %d %s", admin, code, body)
	}
	return c
}

// casLog records what the clients were told about their CAS writes.
type casLog struct {
	mu        sync.Mutex
	acked     map[string]bool   // items whose append was acknowledged
	maybe     map[string]bool   // items with an unknown outcome
	byVersion map[uint64]string // acknowledged version -> value
	conflicts []string
	lastAck   time.Time
}

// appendLoop appends items "<client>-<i>" to the comma-separated list at
// key, each with a read and a CAS on the version read, until stop closes.
func (l *casLog) appendLoop(kv meta.KV, key, client string, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		item := fmt.Sprintf("%s-%d", client, i)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			cur, err := kv.Get(ctx, key)
			var version uint64
			var list string
			if err == nil {
				version, list = cur.Version, string(cur.Value)
			} else if !errors.Is(err, meta.ErrNotFound) {
				cancel()
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				continue // nothing written yet: retry the read
			}
			next := item
			if list != "" {
				next = list + "," + item
			}
			put, err := kv.Put(ctx, key, []byte(next), meta.IfVersion(version))
			cancel()
			if errors.Is(err, meta.ErrVersionMismatch) {
				continue // lost the race: read again
			}
			l.mu.Lock()
			if err != nil {
				// Ambiguous, or failed at a moment we cannot tell: the item
				// may be in the list (at most once), or not.
				l.maybe[item] = true
			} else {
				l.acked[item] = true
				l.lastAck = time.Now()
				if prev, ok := l.byVersion[put.Version]; ok && prev != next {
					l.conflicts = append(l.conflicts, fmt.Sprintf("version %d acknowledged as %q and %q", put.Version, prev, next))
				}
				l.byVersion[put.Version] = next
			}
			l.mu.Unlock()
			break
		}
	}
}

func (l *casLog) acks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// Three real `quire start` processes with the same meta_addrs form one
// cluster. Clients CAS-append through the meta gRPC API (meta.Client) while
// the leader is killed with SIGKILL: every acknowledged append is on the
// survivors exactly once, no version was acknowledged with two values, a new
// leader serves within a few election timeouts, the killed node shows as
// down within the lease TTL and, restarted, rejoins with its data. Topics
// created through one node are listed by the others.
func TestClusterFailover(t *testing.T) {
	nodes := startCluster(t)
	election, ttl := clusterTiming()
	ctx := context.Background()

	// One cluster: every node lists the three nodes up, with one leader.
	c := clusterOf(t, nodes[1].admin)
	if len(c.Nodes) != 3 || c.MetaMode != "raft" || c.MetaLeader == 0 {
		t.Fatalf("cluster = %+v", c)
	}
	for i, n := range c.Nodes {
		if n.ID != uint64(i+1) || n.State != "up" || strings.Join(n.Roles, ",") != "meta,bookie,broker" {
			t.Errorf("node %+v", n)
		}
	}
	if out := mustCtl(t, "--server", nodes[2].admin, "cluster", "status"); !strings.Contains(out, "Meta leader:  "+fmt.Sprint(c.MetaLeader)+" (raft)") {
		t.Errorf("quirectl cluster status:\n%s", out)
	}

	// A topic created through node 1 is listed by nodes 2 and 3.
	mustCtl(t, "--server", nodes[0].admin, "topic", "create", "orders", "--partitions", "2")
	for _, n := range nodes[1:] {
		if out := mustCtl(t, "--server", n.admin, "topic", "list"); !strings.Contains(out, "orders") || !strings.Contains(out, "on-node-1") {
			t.Errorf("topic list on node %d:\n%s", n.id, out)
		}
	}

	// CAS writers through the meta gRPC API.
	var grpcAddrs []string
	for _, n := range nodes {
		grpcAddrs = append(grpcAddrs, n.grpc)
	}
	const key = "/test/failover"
	log := &casLog{acked: map[string]bool{}, maybe: map[string]bool{}, byVersion: map[uint64]string{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		cl, err := meta.NewClient(meta.ClientOptions{Addrs: grpcAddrs, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		wg.Add(1)
		go log.appendLoop(cl, key, fmt.Sprintf("c%d", i), stop, &wg)
	}
	stopped := false
	stopWriters := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopWriters()
	for deadline := time.Now().Add(10 * time.Second); log.acks() < 50; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d acknowledged writes in 10s", log.acks())
		}
	}

	// Kill the leader mid-stream.
	leader := nodes[clusterOf(t, nodes[0].admin).MetaLeader-1]
	before := log.acks()
	killedAt := time.Now()
	if err := leader.p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-leader.p.done
	var survivors []*clusterNode
	for _, n := range nodes {
		if n != leader {
			survivors = append(survivors, n)
		}
	}
	// A new leader serves: acknowledged writes resume.
	for {
		log.mu.Lock()
		resumed := log.lastAck.After(killedAt) && len(log.acked) > before+5
		log.mu.Unlock()
		if resumed {
			break
		}
		if time.Since(killedAt) > 20*election+5*time.Second {
			t.Fatalf("no acknowledged write %v after killing leader %d", time.Since(killedAt), leader.id)
		}
		time.Sleep(5 * time.Millisecond)
	}
	failover := time.Since(killedAt)
	t.Logf("killed leader %d; writes acknowledged again after %v (election timeout %v)", leader.id, failover.Round(time.Millisecond), election)
	if failover > 10*election+2*time.Second {
		t.Errorf("failover took %v, more than a few election timeouts (%v)", failover, election)
	}

	// The killed node shows down on the survivors within the lease TTL
	// (plus the time to elect the leader that expires it).
	var downAfter time.Duration
	for {
		c := clusterOf(t, survivors[0].admin)
		if !c.Stale && len(c.Nodes) == 3 && c.Nodes[leader.id-1].State == "down" {
			downAfter = time.Since(killedAt)
			break
		}
		if time.Since(killedAt) > ttl+failover+5*time.Second {
			t.Fatalf("killed node %d not down after %v: %+v", leader.id, time.Since(killedAt), c)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("node %d shown down after %v (lease TTL %v)", leader.id, downAfter.Round(time.Millisecond), ttl)
	if downAfter > ttl+failover+time.Second {
		t.Errorf("node %d shown down only after %v (lease TTL %v, failover %v)", leader.id, downAfter, ttl, failover)
	}
	time.Sleep(200 * time.Millisecond) // a few more writes under the new leader
	stopWriters()

	// Every acknowledged append exactly once; unknown ones at most once;
	// every acknowledged value is a prefix of the final list.
	check := func(where string, final string) {
		t.Helper()
		count := map[string]int{}
		for _, it := range strings.Split(final, ",") {
			count[it]++
		}
		log.mu.Lock()
		defer log.mu.Unlock()
		for it := range log.acked {
			if count[it] != 1 {
				t.Errorf("%s: acknowledged item %s appears %d times", where, it, count[it])
			}
		}
		for it, n := range count {
			if n > 1 {
				t.Errorf("%s: item %s appears %d times", where, it, n)
			}
			if !log.acked[it] && !log.maybe[it] {
				t.Errorf("%s: item %s was never written", where, it)
			}
		}
		for v, val := range log.byVersion {
			if final != val && !strings.HasPrefix(final, val+",") {
				t.Errorf("%s: value acknowledged at version %d is not a prefix of the final list", where, v)
			}
		}
	}
	log.mu.Lock()
	for _, c := range log.conflicts {
		t.Error(c)
	}
	t.Logf("%d appends acknowledged, %d with an unknown outcome", len(log.acked), len(log.maybe))
	log.mu.Unlock()

	// Read each survivor's own copy once it has caught up with the leader.
	linear, err := meta.NewClient(meta.ClientOptions{Addrs: []string{survivors[0].grpc, survivors[1].grpc}})
	if err != nil {
		t.Fatal(err)
	}
	defer linear.Close()
	final, err := linear.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	check("linearizable read", string(final.Value))
	agree := func(n *clusterNode) {
		t.Helper()
		cl, err := meta.NewClient(meta.ClientOptions{Addrs: []string{n.grpc}})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			kv, err := cl.Get(ctx, key, meta.Stale())
			if err == nil && kv.Version == final.Version {
				if string(kv.Value) != string(final.Value) {
					t.Errorf("node %d holds another value at version %d", n.id, kv.Version)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d: %d/%v, want version %d", n.id, kv.Version, err, final.Version)
			}
		}
	}
	for _, n := range survivors {
		agree(n)
	}

	// The killed node restarts with its data and rejoins: it catches up, and
	// the three agree; it is up again and lists the topic.
	leader.p = startQuire(t, filepath.Dir(leader.cfg), "start", "--config", leader.cfg)
	leader.p.waitReady(t, leader.admin)
	agree(leader)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c := clusterOf(t, leader.admin)
		if !c.Stale && c.Nodes[leader.id-1].State == "up" && c.MetaLeader != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restarted node %d: cluster = %+v", leader.id, c)
		}
	}
	if out := mustCtl(t, "--server", leader.admin, "topic", "list"); !strings.Contains(out, "orders") {
		t.Errorf("topic list on the restarted node:\n%s", out)
	}

	for _, n := range nodes {
		if code := n.p.terminate(t); code != 0 {
			t.Errorf("node %d: exit status %d after SIGTERM\n%s", n.id, code, n.p.stderr)
		}
	}
}
