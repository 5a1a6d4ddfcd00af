package node

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/engines/memory"
	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/internal/node/topics"
	"github.com/quiremq/quire/shard"
)

type adminFixture struct {
	srv    *httptest.Server
	client *adminapi.Client
	ready  atomic.Bool
	up     atomic.Bool // topics service available
	reg    *topics.Registry
	mreg   *prometheus.Registry
}

func newAdminFixture(t *testing.T) *adminFixture { return newAdminFixtureWith(t, false) }

// newAdminFixtureWith is newAdminFixture with /debug/pprof/ served or not.
func newAdminFixtureWith(t *testing.T, pprof bool) *adminFixture {
	t.Helper()
	f := &adminFixture{mreg: prometheus.NewRegistry()}
	mem, disk := memory.New(memory.Options{}), memory.New(memory.Options{})
	router, err := shard.NewRouter("file", []shard.Rule{{Match: "sensors/#", Engine: "memory"}},
		map[string]shard.Engine{"memory": mem, "file": named{disk, "file"}})
	if err != nil {
		t.Fatal(err)
	}
	f.reg = topics.NewRegistry(topics.Options{Store: topics.NewMemStore(false), Router: router})
	if err := f.reg.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.up.Store(true)
	f.ready.Store(true)
	h := newAdminHandler(adminDeps{
		readiness: func() adminapi.Readiness {
			if f.ready.Load() {
				return adminapi.Readiness{Ready: true, Components: []adminapi.Component{{Name: "grpc", State: "running"}, {Name: "broker", State: "running"}}}
			}
			return adminapi.Readiness{Components: []adminapi.Component{{Name: "grpc", State: "running"}, {Name: "broker", State: "starting"}}, NotReady: []string{"broker"}}
		},
		cluster: func() adminapi.Cluster {
			return adminapi.Cluster{ClusterName: "c1", MetaLeader: 4, MetaMode: "local",
				Nodes: []adminapi.Node{{ID: 4, Addr: "h:1228", Roles: []string{"broker"}, State: "ready"}}}
		},
		topics: func() topicService {
			if f.up.Load() {
				return f.reg
			}
			return nil
		},
		gatherer: f.mreg,
		reg:      f.mreg,
		log:      slog.New(slog.DiscardHandler),
		pprof:    pprof,
	})
	f.srv = httptest.NewServer(h)
	t.Cleanup(f.srv.Close)
	f.client = adminapi.NewClient(f.srv.URL)
	return f
}

// do sends a raw request and returns the status and body.
func (f *adminFixture) do(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); path != "/metrics" && ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	return resp.StatusCode, string(b)
}

func TestAdminHealthAndReadiness(t *testing.T) {
	f := newAdminFixture(t)
	if code, body := f.do(t, "GET", "/healthz", ""); code != 200 || !strings.Contains(body, `"status": "ok"`) {
		t.Errorf("/healthz = %d %s", code, body)
	}
	if code, body := f.do(t, "GET", "/readyz", ""); code != 200 || !strings.Contains(body, `"ready": true`) {
		t.Errorf("/readyz = %d %s", code, body)
	}
	f.ready.Store(false)
	code, body := f.do(t, "GET", "/readyz", "")
	var rd adminapi.Readiness
	if err := json.Unmarshal([]byte(body), &rd); err != nil || code != 503 || rd.Ready || len(rd.NotReady) != 1 || rd.NotReady[0] != "broker" {
		t.Errorf("/readyz while starting = %d %s", code, body)
	}
	// The client returns the document with the error.
	rd, err := f.client.Readiness(context.Background())
	if err == nil || rd.NotReady[0] != "broker" {
		t.Errorf("client Readiness = %+v, %v", rd, err)
	}
	// Healthz does not depend on readiness.
	if code, _ := f.do(t, "GET", "/healthz", ""); code != 200 {
		t.Errorf("/healthz while not ready = %d", code)
	}
}

func TestAdminCluster(t *testing.T) {
	f := newAdminFixture(t)
	c, err := f.client.Cluster(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterName != "c1" || c.MetaLeader != 4 || len(c.Nodes) != 1 || c.Nodes[0].Roles[0] != "broker" {
		t.Errorf("cluster = %+v", c)
	}
	_, body := f.do(t, "GET", "/api/v1/cluster", "")
	for _, k := range []string{`"cluster_name"`, `"nodes"`, `"id"`, `"addr"`, `"roles"`, `"state"`, `"meta_leader"`} {
		if !strings.Contains(body, k) {
			t.Errorf("cluster JSON lacks %s: %s", k, body)
		}
	}
}

func TestAdminTopics(t *testing.T) {
	f := newAdminFixture(t)
	ctx := context.Background()

	// Create: rules choose the engine unless one is given.
	tp, err := f.client.CreateTopic(ctx, adminapi.CreateTopicRequest{Name: "orders", Partitions: 3})
	if err != nil || tp.Engine != "file" || tp.Partitions != 3 || len(tp.Shards) != 3 || tp.Shards[1].Shard != "orders/1" {
		t.Fatalf("create orders = %+v, %v", tp, err)
	}
	tp, err = f.client.CreateTopic(ctx, adminapi.CreateTopicRequest{Name: "sensors/temp"})
	if err != nil || tp.Engine != "memory" || tp.Partitions != 1 {
		t.Fatalf("create sensors/temp = %+v, %v", tp, err)
	}
	code, body := f.do(t, "POST", "/api/v1/topics", `{"name":"logs","engine":"memory","partitions":2}`)
	if code != 201 || !strings.Contains(body, `"engine": "memory"`) {
		t.Errorf("POST logs = %d %s", code, body)
	}

	// Errors: status and a message that says what is wrong.
	for _, c := range []struct {
		method, path, body string
		code               int
		msg                string
	}{
		{"POST", "/api/v1/topics", `{"name":"orders"}`, 409, `topic "orders": topics: already exists`},
		{"POST", "/api/v1/topics", `{"name":"x","engine":"s3"}`, 400, `unknown engine "s3"`},
		{"POST", "/api/v1/topics", `{"name":"a/#"}`, 400, "wildcard"},
		{"POST", "/api/v1/topics", `{"name":"x","partitions":0.5}`, 400, "bad request body"},
		{"POST", "/api/v1/topics", `{"name":"x","partiton":2}`, 400, `unknown field "partiton"`},
		{"POST", "/api/v1/topics", `{"name":"x"} {}`, 400, "more than one JSON value"},
		{"POST", "/api/v1/topics", `{"name":"x","partitions":5000}`, 400, "partitions must be 1 to 1024"},
		{"GET", "/api/v1/topics/nope", ``, 404, `topic "nope": topics: not found`},
		{"DELETE", "/api/v1/topics/nope", ``, 404, "not found"},
		{"GET", "/api/v1/nothing", ``, 404, "no such endpoint: GET /api/v1/nothing"},
	} {
		code, body := f.do(t, c.method, c.path, c.body)
		var eb adminapi.ErrorBody
		if err := json.Unmarshal([]byte(body), &eb); err != nil || code != c.code || !strings.Contains(eb.Error, c.msg) {
			t.Errorf("%s %s %s = %d %s; want %d with %q", c.method, c.path, c.body, code, body, c.code, c.msg)
		}
	}

	// Watermarks are listed per partition.
	s, err := f.reg.Shard("orders", 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, []shard.Record{{Value: []byte("v")}}); err != nil {
		t.Fatal(err)
	}
	list, err := f.client.Topics(ctx)
	if err != nil || len(list) != 3 || list[0].Name != "logs" || list[1].Name != "orders" || list[2].Name != "sensors/temp" {
		t.Fatalf("list = %+v, %v", list, err)
	}
	if p := list[1].Shards[2]; p.High != 1 || p.Low != 0 || p.Shard != "orders/2" {
		t.Errorf("orders/2 = %+v", p)
	}

	// Names with '/' work raw and escaped.
	for _, path := range []string{"/api/v1/topics/sensors/temp", "/api/v1/topics/sensors%2Ftemp"} {
		if code, body := f.do(t, "GET", path, ""); code != 200 || !strings.Contains(body, `"name": "sensors/temp"`) {
			t.Errorf("GET %s = %d %s", path, code, body)
		}
	}
	if err := f.client.DeleteTopic(ctx, "sensors/temp"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.Topic(ctx, "sensors/temp"); !adminapi.IsNotFound(err) {
		t.Errorf("after delete: %v, want 404", err)
	}
	if err := f.client.DeleteTopic(ctx, "sensors/temp"); !adminapi.IsNotFound(err) || !strings.Contains(err.Error(), "not found") {
		t.Errorf("second delete: %v", err)
	}

	// While the broker is down the topic API says so.
	f.up.Store(false)
	code, body = f.do(t, "GET", "/api/v1/topics", "")
	if code != 503 || !strings.Contains(body, "broker is not running") {
		t.Errorf("topics while broker down = %d %s", code, body)
	}
}

func TestAdminMetrics(t *testing.T) {
	f := newAdminFixture(t)
	f.do(t, "GET", "/healthz", "")
	f.do(t, "POST", "/api/v1/topics", `{"name":"t"}`)
	f.do(t, "POST", "/api/v1/topics", `{"name":"t"}`)
	f.do(t, "GET", "/nope", "")
	code, body := f.do(t, "GET", "/metrics", "")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	for _, want := range []string{
		`quire_admin_http_requests_total{code="200",path="GET /healthz"} 1`,
		`quire_admin_http_requests_total{code="201",path="POST /api/v1/topics"} 1`,
		`quire_admin_http_requests_total{code="409",path="POST /api/v1/topics"} 1`,
		`quire_admin_http_requests_total{code="404",path="other"} 1`,
		`quire_admin_http_request_duration_seconds_count{path="GET /healthz"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// With admin.pprof the runtime profiles are served under /debug/pprof/
// (a CPU profile is a gzipped protobuf); without it they are not found.
func TestAdminPprof(t *testing.T) {
	for _, on := range []bool{false, true} {
		f := newAdminFixtureWith(t, on)
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/profile?seconds=1"} {
			resp, err := http.Get(f.srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case !on && resp.StatusCode != http.StatusNotFound:
				t.Errorf("pprof off: GET %s = %d", path, resp.StatusCode)
			case on && resp.StatusCode != http.StatusOK:
				t.Errorf("pprof on: GET %s = %d %s", path, resp.StatusCode, body)
			case on && strings.Contains(path, "profile") && !bytes.HasPrefix(body, []byte{0x1f, 0x8b}):
				t.Errorf("pprof on: GET %s is not a gzipped profile: % x", path, body[:min(len(body), 8)])
			case on && strings.Contains(path, "goroutine") && !strings.Contains(string(body), "goroutine profile:"):
				t.Errorf("pprof on: GET %s = %.200s", path, body)
			}
		}
	}
}
