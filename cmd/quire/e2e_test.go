package main

// End-to-end tests: they build the real quire and quirectl binaries and run
// them as a user would, as separate processes on loopback ports.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/internal/testaddr"
	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
)

const e2eVersion = "v0.0.0-e2e"

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// binaries builds quire and quirectl once per test run.
func binaries(t *testing.T) (quire, quirectl string) {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "quire-e2e-bin-")
		if binErr != nil {
			return
		}
		args := []string{"build", "-o", binDir + string(os.PathSeparator),
			"-ldflags", "-X github.com/quiremq/quire/internal/version.Version=" + e2eVersion}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./cmd/quire", "./cmd/quirectl")
		cmd := exec.Command("go", args...)
		cmd.Dir = "../.."
		out, err := cmd.CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "quire"), filepath.Join(binDir, "quirectl")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// syncBuffer collects a process's output.
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

// proc is a running quire process.
type proc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

// env is the environment of the processes: without QUIRE_SERVER, and
// without the race detector's default 1s sleep at exit.
func env() []string {
	var e []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QUIRE_") && !strings.HasPrefix(kv, "GORACE=") {
			e = append(e, kv)
		}
	}
	return append(e, "GORACE=atexit_sleep_ms=0 halt_on_error=1")
}

func startQuire(t *testing.T, dir string, args ...string) *proc {
	t.Helper()
	quire, _ := binaries(t)
	p := &proc{cmd: exec.Command(quire, args...), stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Env = env()
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitReady polls /readyz until it answers 200.
func (p *proc) waitReady(t *testing.T, admin string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.exited() {
			t.Fatalf("quire exited before it was ready (%v):\n%s", p.err, p.stderr)
		}
		resp, err := http.Get("http://" + admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("quire not ready at %s after 30s:\n%s", admin, p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exitCode waits up to d for the process to exit.
func (p *proc) exitCode(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("quire did not exit within %v:\n%s", d, p.stderr)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// terminate sends SIGTERM and returns the exit status.
func (p *proc) terminate(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	return p.exitCode(t, 10*time.Second)
}

// ctl runs quirectl and returns its stdout, stderr and exit status.
func ctl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	_, quirectl := binaries(t)
	cmd := exec.Command(quirectl, args...)
	cmd.Env = env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := ctl(t, args...)
	if code != 0 {
		t.Fatalf("quirectl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// freeAddrs returns n loopback addresses whose ports are free right now,
// below the ephemeral range: nodes restart on them (testaddr.Loopback).
func freeAddrs(t *testing.T, n int) []string { return testaddr.Loopback(t, n) }

func writeConfig(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func grpcHealth(t *testing.T, addr string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("gRPC health check on %s: %v", addr, err)
	}
	return resp.Status
}

// shardDirs returns the shard names found in the file engine's directory
// (each shard directory holds a NAME file with the shard's name).
func shardDirs(t *testing.T, dataDir string, names ...string) map[string]bool {
	t.Helper()
	found := map[string]bool{}
	entries, err := os.ReadDir(filepath.Join(dataDir, "file"))
	if err != nil {
		t.Fatalf("file engine directory: %v", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dataDir, "file", e.Name(), "NAME"))
		if err != nil {
			continue
		}
		for _, n := range names {
			if bytes.Contains(b, []byte(n)) {
				found[n] = true
			}
		}
	}
	return found
}

func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	addrs := freeAddrs(t, 2)
	grpcAddr, admin := addrs[0], addrs[1]
	dataDir := filepath.Join(dir, "data")
	cfg := writeConfig(t, dir, "quire.toml", fmt.Sprintf(`
cluster_name = "e2e"
data_dir = %q

[log]
format = "json"

[grpc]
addr = %q

[admin]
addr = %q

[[storage.rules]]
match = "sensors/#"
engine = "memory"
`, dataDir, grpcAddr, admin))

	p := startQuire(t, dir, "start", "--config", cfg)
	p.waitReady(t, admin)

	// Health, metrics and gRPC health.
	if code, body := httpGet(t, "http://"+admin+"/healthz"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Errorf("/healthz = %d %s", code, body)
	}
	_, metrics := httpGet(t, "http://"+admin+"/metrics")
	for _, want := range []string{"go_goroutines ", "process_cpu_seconds_total ", "process_open_fds ", "quire_node_ready 1",
		`quire_node_component_state{component="broker",state="running"} 1`, "quire_memory_", "quire_file_",
		`quire_node_info{cluster="e2e",commit=`, `version="` + e2eVersion + `"`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if st := grpcHealth(t, grpcAddr); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health = %v, want SERVING", st)
	}

	// The node has the bookie role: journal.v1.Bookie on the inner gRPC port.
	bc, err := bookierpc.Dial(grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	acks := make(chan error, 1)
	as, err := bc.AddStream(context.Background(), func(r bookierpc.AddResult) { acks <- r.Err })
	if err != nil {
		t.Fatal(err)
	}
	if err := as.Add(bookierpc.Add{Ledger: 42, Entry: 0, LAC: -1, Payload: []byte("through the node")}); err != nil {
		t.Fatal(err)
	}
	if err := as.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-acks; err != nil {
		t.Errorf("bookie add through the node: %v", err)
	}
	if got, err := bc.ReadEntry(context.Background(), 42, 0, false); err != nil || string(got) != "through the node" {
		t.Errorf("bookie read through the node: %q, %v", got, err)
	}
	if _, err := bc.ReadEntry(context.Background(), 42, 1, false); !errors.Is(err, bookie.ErrNoSuchEntry) {
		t.Errorf("bookie read of a missing entry: %v, want NO_SUCH_ENTRY", err)
	}
	_, metrics = httpGet(t, "http://"+admin+"/metrics")
	for _, want := range []string{`quire_node_component_state{component="bookie",state="running"} 1`, "quire_bookie_adds_total 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// quirectl: cluster status and topics.
	out := mustCtl(t, "--server", admin, "cluster", "status")
	for _, want := range []string{"Cluster:", "e2e", "Meta leader:  1 (raft)", "meta,bookie,broker", "up", grpcAddr, e2eVersion} {
		if !strings.Contains(out, want) {
			t.Errorf("cluster status lacks %q:\n%s", want, out)
		}
	}
	if out := mustCtl(t, "topic", "create", "orders", "--partitions", "2", "--server", admin); out != "created topic orders (engine file, 2 partition(s))\n" {
		t.Errorf("create orders: %q", out)
	}
	if out := mustCtl(t, "--server", admin, "topic", "create", "sensors/temp"); out != "created topic sensors/temp (engine memory, 1 partition(s))\n" {
		t.Errorf("create sensors/temp (memory by rule): %q", out)
	}
	_, errOut, code := ctl(t, "--server", admin, "topic", "create", "orders")
	if code != 1 || !strings.Contains(errOut, `topic "orders"`) || !strings.Contains(errOut, "already exists") {
		t.Errorf("duplicate create: exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = ctl(t, "--server", admin, "topic", "create", "x", "--engine", "s3")
	if code != 1 || !strings.Contains(errOut, `unknown engine "s3"`) {
		t.Errorf("create on unknown engine: exit %d, stderr %q", code, errOut)
	}

	table := mustCtl(t, "--server", admin, "topic", "list")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[0], "ENGINE") ||
		strings.Join(strings.Fields(lines[1])[:5], " ") != "orders file 2 0 ok" ||
		strings.Join(strings.Fields(lines[2])[:5], " ") != "sensors/temp memory 1 0 ok" {
		t.Errorf("topic list table:\n%s", table)
	}
	var tl adminapi.TopicList
	if err := json.Unmarshal([]byte(mustCtl(t, "--server", admin, "topic", "list", "--json")), &tl); err != nil {
		t.Fatal(err)
	}
	if len(tl.Topics) != 2 || tl.Topics[0].Name != "orders" || len(tl.Topics[0].Shards) != 2 || tl.Topics[0].Shards[1].Shard != "orders/1" || tl.Topics[1].Engine != "memory" {
		t.Errorf("topic list --json = %+v", tl)
	}
	if out := mustCtl(t, "--server", admin, "topic", "describe", "orders"); !strings.Contains(out, "PARTITION") || !strings.Contains(out, "orders/1") {
		t.Errorf("describe: %s", out)
	}

	// The file engine holds the file topic's shards under data_dir; the
	// memory topic has none there.
	found := shardDirs(t, dataDir, "orders/0", "orders/1", "sensors/temp/0")
	if !found["orders/0"] || !found["orders/1"] || found["sensors/temp/0"] {
		t.Errorf("file engine shard directories: %v", found)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "meta", "raft")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "topics.json")); !os.IsNotExist(err) {
		t.Errorf("topics.json with meta: %v", err)
	}

	// A second node cannot use the same data_dir.
	other := freeAddrs(t, 2)
	cfg2 := writeConfig(t, dir, "other.toml", fmt.Sprintf("data_dir = %q\n[grpc]\naddr = %q\n[admin]\naddr = %q\n", dataDir, other[0], other[1]))
	p2 := startQuire(t, dir, "start", "--config", cfg2)
	if code := p2.exitCode(t, 20*time.Second); code != 1 || !strings.Contains(p2.stderr.String(), "in use by another quire node") {
		t.Errorf("second node on the same data_dir: exit %d\n%s", code, p2.stderr)
	}

	// SIGTERM: clean stop, exit 0; logs are JSON lines.
	if code := p.terminate(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d\n%s", code, p.stderr)
	}
	var sawStopped bool
	for _, l := range strings.Split(strings.TrimSpace(p.stderr.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", l)
			continue
		}
		if rec["msg"] == "node stopped" {
			sawStopped = true
		}
	}
	if !sawStopped {
		t.Errorf("no \"node stopped\" log:\n%s", p.stderr)
	}

	// Restart: the topics are still there.
	p = startQuire(t, dir, "start", "--config", cfg, "--log-format", "text")
	p.waitReady(t, admin)
	table = mustCtl(t, "--server", admin, "topic", "list")
	if !strings.Contains(table, "orders") || !strings.Contains(table, "sensors/temp") {
		t.Errorf("after restart:\n%s", table)
	}
	if out := mustCtl(t, "--server", admin, "topic", "delete", "orders"); out != "deleted topic orders\n" {
		t.Errorf("delete: %q", out)
	}
	if found := shardDirs(t, dataDir, "orders/0"); found["orders/0"] {
		t.Error("the deleted topic's shard directory remains")
	}
	_, errOut, code = ctl(t, "--server", admin, "topic", "delete", "orders")
	if code != 1 || !strings.Contains(errOut, "not found") {
		t.Errorf("delete of a missing topic: exit %d, %q", code, errOut)
	}
	if code := p.terminate(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d\n%s", code, p.stderr)
	}
	if !strings.Contains(p.stderr.String(), `msg="node stopped"`) {
		t.Errorf("--log-format text not applied:\n%s", p.stderr)
	}
}

// A configuration error exits 2 and names the file, the key and the line.
func TestBadConfigExit2(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, doc string
		want      []string
	}{
		{"unknown key", "cluster_name = \"x\"\n\nnodeid = 3\n", []string{":3:", "nodeid", "unknown key", `did you mean "node_id"`}},
		{"bad duration", "[storage.file]\nsync_interval = \"soon\"\n", []string{":2:", "storage.file.sync_interval", `invalid duration "soon"`}},
		{"unknown engine", "[[storage.rules]]\nmatch = \"a/#\"\nengine = \"cassandra\"\n", []string{":3:", "storage.rules[0].engine", `unknown engine "cassandra"`}},
		{"not a voter", "node_id = 3\nmeta_addrs = [\"1@a:1228\", \"2@b:1228\"]\n", []string{":2:", "meta_addrs", "this node (node_id = 3) is not one of the meta voters (node ids 1, 2)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writeConfig(t, dir, strings.ReplaceAll(c.name, " ", "-")+".toml", c.doc)
			p := startQuire(t, dir, "start", "--config", path)
			if code := p.exitCode(t, 20*time.Second); code != 2 {
				t.Errorf("exit status %d, want 2", code)
			}
			for _, w := range append(c.want, path) {
				if !strings.Contains(p.stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, p.stderr)
				}
			}
		})
	}
	// Bad flags are usage errors too.
	p := startQuire(t, dir, "start", "--log-format", "xml")
	if code := p.exitCode(t, 20*time.Second); code != 2 || !strings.Contains(p.stderr.String(), "flag --log-format") {
		t.Errorf("bad --log-format: exit %d\n%s", code, p.stderr)
	}
	p = startQuire(t, dir, "start", "--config", filepath.Join(dir, "missing.toml"))
	if code := p.exitCode(t, 20*time.Second); code != 2 || !strings.Contains(p.stderr.String(), "missing.toml") {
		t.Errorf("missing config: exit %d\n%s", code, p.stderr)
	}
}

// `quire start` with no flags runs on the embedded default: data in ./data
// of the working directory, admin on :58080, gRPC on :1228. It needs those
// ports. Both lie in Linux's ephemeral range (32768–60999), so while the
// other packages' tests run, a client socket or a ":0" listener may hold
// one for a moment: the test waits up to two minutes for them to be free,
// then fails (it does not skip) and says so.
func TestDefaultConfig(t *testing.T) {
	deadline := time.Now().Add(2 * time.Minute)
	for _, addr := range []string{"0.0.0.0:58080", "0.0.0.0:1228"} {
		for {
			l, err := net.Listen("tcp", addr)
			if err == nil {
				l.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the default port %s is busy (%v): this test runs `quire start` on the default configuration and needs it free", addr, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	cwd := t.TempDir()
	p := startQuire(t, cwd, "start")
	p.waitReady(t, "127.0.0.1:58080")
	for _, f := range []string{"LOCK", "meta/raft", "meta/snapshots", "file", "bookie/COOKIE"} {
		if _, err := os.Stat(filepath.Join(cwd, "data", f)); err != nil {
			t.Errorf("./data/%s: %v", f, err)
		}
	}
	if st := grpcHealth(t, "127.0.0.1:1228"); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("gRPC health on :1228 = %v", st)
	}
	// quirectl's default server is the default admin address.
	if out := mustCtl(t, "cluster", "status"); !strings.Contains(out, "quire") || !strings.Contains(out, "Meta leader:  1 (raft)") || !strings.Contains(out, " up ") {
		t.Errorf("cluster status:\n%s", out)
	}
	if !strings.Contains(p.stderr.String(), "embedded default configuration") || !strings.Contains(p.stderr.String(), "listener=mqtt.tcp") || !strings.Contains(p.stderr.String(), "mqtt.quic=:14567") {
		t.Errorf("logs:\n%s", p.stderr)
	}
	if code := p.terminate(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d\n%s", code, p.stderr)
	}
}

func TestBinariesHelpAndVersion(t *testing.T) {
	quire, quirectl := binaries(t)
	for _, c := range []struct {
		bin  string
		args []string
		want []string
	}{
		{quire, []string{"--help"}, []string{"quire start", "quire bookie", "quire version", "./data", ":58080"}},
		{quire, []string{"bookie", "--help"}, []string{"--data-dir DIR", "--addr HOST:PORT", "--journal-dir DIR", "--metrics-addr HOST:PORT", "--cookie-store FILE", ".quire-cookies.json", "Examples:"}},
		{quire, []string{"start", "--help"}, []string{"--config FILE", "--data-dir DIR", "--node-id N", "--log-format FORMAT", "1228", "58080", "1883", "Examples:"}},
		{quire, []string{"version"}, []string{"quire " + e2eVersion + " (commit "}},
		{quirectl, []string{"--help"}, []string{"cluster status", "topic create NAME", "--server HOST:PORT", "--json"}},
		{quirectl, []string{"topic", "create", "--help"}, []string{"--engine ENGINE", "--partitions N"}},
		{quirectl, []string{"version"}, []string{"quirectl " + e2eVersion}},
	} {
		cmd := exec.Command(c.bin, c.args...)
		cmd.Env = env()
		out, err := cmd.Output()
		if err != nil {
			t.Errorf("%s %v: %v", filepath.Base(c.bin), c.args, err)
		}
		for _, w := range c.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s %v lacks %q:\n%s", filepath.Base(c.bin), c.args, w, out)
			}
		}
	}
}
