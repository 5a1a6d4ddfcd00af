package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/objstore/s3test"
	"github.com/quiremq/quire/internal/testaddr"
)

// TestCompose brings up docker-compose.yml with locally built images and
// checks that the three nodes form one cluster and serve MQTT, that topics
// offload to MinIO and topics on the s3 engine land there, and that a
// restarted node replays offloaded messages to a persistent session.
func TestCompose(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	compose := needTool(t, "docker-compose")
	needTool(t, "docker")
	if err := exec.Command("docker", "info").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the Docker engine is not running: %v", err)
		}
		t.Skipf("the Docker engine is not running: %v", err)
	}
	tag := fmt.Sprintf("test-%d", os.Getpid())
	quireImage := "quire:" + tag
	minioImage := "quire-minio:" + tag
	buildImages(t, quireImage, minioImage)

	// Ports Docker publishes on every interface, below the ephemeral range
	// (where outgoing connections could take them before Docker binds them).
	ports := testaddr.Ports(t, "0.0.0.0", 7)
	project := "quiretest" + tag[5:]
	env := append(os.Environ(),
		"QUIRE_IMAGE="+quireImage, "MINIO_IMAGE="+minioImage,
		"MINIO_PORT="+ports[0],
		"QUIRE1_MQTT_PORT="+ports[1], "QUIRE2_MQTT_PORT="+ports[2], "QUIRE3_MQTT_PORT="+ports[3],
		"QUIRE1_ADMIN_PORT="+ports[4], "QUIRE2_ADMIN_PORT="+ports[5], "QUIRE3_ADMIN_PORT="+ports[6],
	)
	dc := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, compose, append([]string{"-p", project, "-f", "docker-compose.yml"}, args...)...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := dc("logs", "--tail", "40")
			t.Logf("docker-compose logs:\n%s", out)
		}
		if out, err := dc("down", "-v", "--remove-orphans"); err != nil {
			t.Errorf("docker-compose down: %v\n%s", err, out)
		}
		exec.Command("docker", "rmi", "-f", quireImage, minioImage).Run()
	})
	if out, err := dc("up", "-d"); err != nil {
		t.Fatalf("docker-compose up: %v\n%s", err, out)
	}

	// One cluster: every node sees three nodes up and the same leader.
	admin := []string{ports[4], ports[5], ports[6]}
	deadline := time.Now().Add(2 * time.Minute)
	for _, p := range admin {
		for {
			n, leader, err := clusterState(p)
			if err == nil && n == 3 && leader != 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node on admin port %s: %d nodes up, leader %d, %v", p, n, leader, err)
			}
			time.Sleep(time.Second)
		}
	}

	// MQTT through every node and across nodes: a QoS 1 subscriber on each
	// node gets, once each and in order, what a publisher on every node
	// sent.
	var subs []*inbox
	var pubs []paho3.Client
	for i, p := range ports[1:4] {
		url := "tcp://127.0.0.1:" + p
		in := &inbox{got: map[string][]string{}}
		sub := mqttClient(t, url, fmt.Sprintf("sub-%d", i))
		if tok := sub.Subscribe("compose/#", 1, in.handle); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe on node %d: %v", i+1, tok.Error())
		}
		subs = append(subs, in)
		pubs = append(pubs, mqttClient(t, url, fmt.Sprintf("pub-%d", i)))
	}
	for i, pub := range pubs {
		waitRouted(t, pub, fmt.Sprintf("compose/probe%d", i+1), subs...)
	}
	const n = 50
	for i, pub := range pubs {
		for j := range n {
			if tok := pub.Publish(fmt.Sprintf("compose/n%d", i+1), 1, false, strconv.Itoa(j)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("publish on node %d: %v", i+1, tok.Error())
			}
		}
	}
	want := make([]string, n)
	for j := range want {
		want[j] = strconv.Itoa(j)
	}
	for i, in := range subs {
		for k := range pubs {
			topic := fmt.Sprintf("compose/n%d", k+1)
			deadline := time.Now().Add(30 * time.Second)
			for len(in.topic(topic)) < n && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if got := in.topic(topic); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("the subscriber on node %d got %s (published on node %d) %v, want 0..%d once each in order", i+1, topic, k+1, got, n-1)
			}
		}
	}
	checkOffload(t, dc, ports[0], ports[1], ports[2], ports[4])
}

// inbox records what a subscriber gets, by topic.
type inbox struct {
	mu  sync.Mutex
	got map[string][]string
}

func (in *inbox) handle(_ paho3.Client, m paho3.Message) {
	in.mu.Lock()
	in.got[m.Topic()] = append(in.got[m.Topic()], string(m.Payload()))
	in.mu.Unlock()
}

func (in *inbox) topic(name string) []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.got[name]...)
}

// waitRouted publishes probes on topic through pub until each inbox got
// one: the subscriptions behind the inboxes reached pub's node (routes
// travel between nodes in a fraction of a second).
func waitRouted(t *testing.T, pub paho3.Client, topic string, ins ...*inbox) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for i := 0; ; i++ {
		if tok := pub.Publish(topic, 1, false, strconv.Itoa(i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish probe %s: %v", topic, tok.Error())
		}
		time.Sleep(200 * time.Millisecond)
		all := true
		for _, in := range ins {
			all = all && len(in.topic(topic)) > 0
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("probes on %s reached no subscriber on some node within a minute", topic)
		}
	}
}

// checkOffload: persistent sessions on node 1 and on node 2 are offline
// while 1.5 MiB of QoS 1 messages go to node 1's file shards (1 MiB
// segments, offload to MinIO, no delete lag) and to an archive/ topic on
// the s3 engine; the sealed segments show up in MinIO, node 1 restarts,
// and the session on node 1 gets every message, replayed from shards whose
// older segments now live only in MinIO; the one on node 2 reads every
// message back through node 2, which pulled them from node 1.
func checkOffload(t *testing.T, dc func(...string) (string, error), minioPort, mqttPort, mqttPort2, adminPort string) {
	url, url2 := "tcp://127.0.0.1:"+mqttPort, "tcp://127.0.0.1:"+mqttPort2
	got, got2 := make(chan string, 1000), make(chan string, 1000)
	opts := func(url, id string, got chan string) *paho3.ClientOptions {
		return paho3.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).SetCleanSession(false).
			SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
			SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { got <- string(m.Payload()) })
	}
	for _, o := range []*paho3.ClientOptions{opts(url, "archiver", got), opts(url2, "archiver-2", got2)} {
		sub := paho3.NewClient(o)
		if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", o.ClientID, tok.Error())
		}
		if tok := sub.Subscribe("offload/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", o.ClientID, tok.Error())
		}
		sub.Disconnect(100)
	}

	pub := mqttClient(t, url, "offload-pub")
	// archiver-2's filter reached node 1 once a filter node 2 got later
	// did (node 2 sends its whole set).
	watch := &inbox{got: map[string][]string{}}
	if tok := mqttClient(t, url2, "offload-watch").Subscribe("offload-probe/#", 1, watch.handle); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe offload-watch: %v", tok.Error())
	}
	waitRouted(t, pub, "offload-probe/x", watch)
	const n = 384 // × 4 KiB: one and a half 1 MiB segments
	pad := strings.Repeat("p", 4096)
	for i := range n {
		if tok := pub.Publish("offload/x", 1, false, fmt.Sprintf("%04d%s", i, pad)); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
		if i < 10 {
			if tok := pub.Publish("archive/x", 1, false, fmt.Sprintf("archived-%d", i)); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
				t.Fatalf("publish archive %d: %v", i, tok.Error())
			}
		}
	}
	st, err := s3store.Open(t.Context(), s3store.Options{Endpoint: "127.0.0.1:" + minioPort, Bucket: "quire",
		AccessKey: "quire", SecretKey: "quire-secret", PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		files, err1 := st.List(t.Context(), "quire/node-1/file/")
		arch, err2 := st.List(t.Context(), "quire/node-1/s3/")
		if err1 == nil && err2 == nil && len(files) > 0 && len(arch) > 0 {
			t.Logf("MinIO holds %d offloaded file objects and %d s3-engine objects of node 1", len(files), len(arch))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing offloaded to MinIO: %d file objects (%v), %d s3 objects (%v)", len(files), err1, len(arch), err2)
		}
		time.Sleep(time.Second)
	}
	if out, err := dc("restart", "quire1"); err != nil {
		t.Fatalf("restart quire1: %v\n%s", err, out)
	}
	deadline = time.Now().Add(2 * time.Minute)
	for {
		n, leader, err := clusterState(adminPort)
		if err == nil && n == 3 && leader != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 1 after restart: %d up, leader %d, %v", n, leader, err)
		}
		time.Sleep(time.Second)
	}
	for _, c := range []struct {
		url, id, where string
		got            chan string
	}{{url, "archiver", "node 1 after its restart", got}, {url2, "archiver-2", "node 2, published on node 1", got2}} {
		var sub paho3.Client
		for range 30 {
			sub = paho3.NewClient(opts(c.url, c.id, c.got))
			tok := sub.Connect()
			if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
				break
			}
			time.Sleep(time.Second)
		}
		defer sub.Disconnect(100)
		seen := map[string]bool{}
		for len(seen) < n {
			select {
			case m := <-c.got:
				seen[m[:4]] = true
			case <-time.After(30 * time.Second):
				t.Fatalf("the persistent session on %s got %d of %d messages", c.where, len(seen), n)
			}
		}
	}
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// buildImages builds Quire's image from static binaries and MinIO's from
// the binary tools/install-s3-servers.sh installs, as `make images` does.
func buildImages(t *testing.T, quireImage, minioImage string) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	ctxDir := t.TempDir()
	build := exec.Command("go", "build", "-o", ctxDir+"/", "./cmd/quire", "./cmd/quirectl")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	docker := func(dir, dockerfile, tag string) {
		t.Helper()
		cmd := exec.Command("docker", "build", "-q", "-t", tag, "-f", dockerfile, dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docker build %s: %v\n%s", tag, err, out)
		}
	}
	docker(ctxDir, filepath.Join(root, "deploy", "Dockerfile"), quireImage)
	minio := s3test.Binary("minio", "QUIRE_MINIO_BIN")
	if minio == "" {
		install := exec.Command(filepath.Join(root, "tools", "install-s3-servers.sh"))
		if out, err := install.CombinedOutput(); err != nil {
			t.Fatalf("tools/install-s3-servers.sh: %v\n%s", err, out)
		}
		if minio = s3test.Binary("minio", "QUIRE_MINIO_BIN"); minio == "" {
			t.Fatal("no minio binary after tools/install-s3-servers.sh")
		}
	}
	mctx := t.TempDir()
	data, err := os.ReadFile(minio)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mctx, "minio"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	docker(mctx, filepath.Join(root, "deploy", "Dockerfile.minio"), minioImage)
}

func clusterState(adminPort string) (up int, leader uint64, err error) {
	resp, err := http.Get("http://127.0.0.1:" + adminPort + "/api/v1/cluster")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var c struct {
		Nodes []struct {
			State string `json:"state"`
		} `json:"nodes"`
		MetaLeader uint64 `json:"meta_leader"`
	}
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	if err := json.Unmarshal(buf.Bytes(), &c); err != nil {
		return 0, 0, fmt.Errorf("%v: %s", err, strings.TrimSpace(buf.String()))
	}
	for _, n := range c.Nodes {
		if n.State == "up" {
			up++
		}
	}
	return up, c.MetaLeader, nil
}

func mqttClient(t *testing.T, url, id string) paho3.Client {
	t.Helper()
	c := paho3.NewClient(paho3.NewClientOptions().AddBroker(url).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second))
	var err error
	for range 30 { // a node may still be starting its MQTT listener
		tok := c.Connect()
		tok.WaitTimeout(10 * time.Second)
		if err = tok.Error(); err == nil {
			t.Cleanup(func() { c.Disconnect(50) })
			return c
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("connect %s to %s: %v", id, url, err)
	return nil
}
