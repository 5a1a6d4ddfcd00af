package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/quiremq/quire/engines/objstore/s3test"
)

// TestCompose brings up docker-compose.yml with locally built images and
// checks that the three nodes form one cluster and serve MQTT.
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

	ports := freePorts(t, 7)
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

	// MQTT through every node: a QoS 1 subscriber gets what a publisher on
	// the same node sent.
	for i, p := range ports[1:4] {
		url := "tcp://127.0.0.1:" + p
		got := make(chan string, 100)
		sub := mqttClient(t, url, fmt.Sprintf("sub-%d", i))
		if tok := sub.Subscribe("compose/#", 1, func(_ paho3.Client, m paho3.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe on node %d: %v", i+1, tok.Error())
		}
		pub := mqttClient(t, url, fmt.Sprintf("pub-%d", i))
		const n = 50
		for j := range n {
			if tok := pub.Publish(fmt.Sprintf("compose/n%d", i+1), 1, false, strconv.Itoa(j)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("publish on node %d: %v", i+1, tok.Error())
			}
		}
		for j := range n {
			select {
			case m := <-got:
				if m != strconv.Itoa(j) {
					t.Fatalf("node %d: message %d is %q", i+1, j, m)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("node %d: %d of %d messages delivered", i+1, j, n)
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

// freePorts returns n distinct free TCP ports below the ephemeral range
// (where outgoing connections could take them before Docker binds them).
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var ps []string
	for p := 20000 + os.Getpid()%8000; len(ps) < n && p < 32000; p++ {
		l, err := net.Listen("tcp4", "0.0.0.0:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		l.Close()
		ps = append(ps, strconv.Itoa(p))
	}
	if len(ps) < n {
		t.Fatal("no free ports")
	}
	return ps
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
