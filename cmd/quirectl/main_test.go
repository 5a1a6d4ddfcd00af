package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// fakeNode answers like a node's admin API and records requests.
type fakeNode struct {
	mu   sync.Mutex
	reqs []string
}

func (f *fakeNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, strings.TrimSpace(r.Method+" "+r.URL.EscapedPath()+" "+string(body)))
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch r.Method + " " + r.URL.Path {
	case "GET /api/v1/cluster":
		io.WriteString(w, `{"cluster_name":"c","meta_leader":3,"meta_mode":"raft","nodes":[{"id":2,"addr":"g:1228","roles":["meta","broker"],"state":"down"},{"id":3,"addr":"h:1228","roles":["meta","broker"],"state":"up"}]}`)
	case "GET /api/v1/topics":
		io.WriteString(w, `{"topics":[{"name":"orders","engine":"file","partitions":2,"created_at":"2026-01-02T03:04:05Z",
			"shards":[{"partition":0,"shard":"orders/0","low":2,"high":7},{"partition":1,"shard":"orders/1","low":0,"high":0,"error":"shard missing"}]}]}`)
	case "POST /api/v1/topics":
		var req map[string]any
		json.Unmarshal(body, &req)
		if req["name"] == "dup" {
			w.WriteHeader(409)
			io.WriteString(w, `{"error":"topic \"dup\": topics: already exists"}`)
			return
		}
		w.WriteHeader(201)
		json.NewEncoder(w).Encode(map[string]any{"name": req["name"], "engine": "memory", "partitions": req["partitions"], "shards": []any{}})
	case "GET /api/v1/topics/sensors/a":
		io.WriteString(w, `{"name":"sensors/a","engine":"memory","partitions":1,"shards":[{"partition":0,"shard":"sensors/a/0","low":0,"high":4}]}`)
	case "DELETE /api/v1/topics/sensors/a":
		io.WriteString(w, `{"deleted":"sensors/a"}`)
	default:
		w.WriteHeader(404)
		io.WriteString(w, `{"error":"no such topic"}`)
	}
}

func runCtl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return out.String(), errOut.String(), code
}

func TestCommands(t *testing.T) {
	f := &fakeNode{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	t.Setenv("QUIRE_SERVER", srv.URL)

	out, _, code := runCtl(t, "cluster", "status")
	if code != 0 || !strings.Contains(out, "Meta leader:  3 (raft)") || !strings.Contains(out, "2   g:1228  meta,broker  down") || !strings.Contains(out, "3*  h:1228  meta,broker  up") {
		t.Errorf("cluster status = %d\n%s", code, out)
	}
	out, _, code = runCtl(t, "topic", "list")
	if code != 0 || !strings.Contains(out, "orders  file    2           5        1 partition(s) unavailable  2026-01-02T03:04:05Z") {
		t.Errorf("topic list = %d\n%s", code, out)
	}
	// --json prints the server's answer unchanged.
	out, _, code = runCtl(t, "topic", "list", "--json")
	if code != 0 || !strings.HasPrefix(out, `{"topics":[{"name":"orders"`) {
		t.Errorf("topic list --json = %d %q", code, out)
	}
	out, _, code = runCtl(t, "topic", "describe", "sensors/a")
	if code != 0 || !strings.Contains(out, "0          sensors/a/0  0    4") {
		t.Errorf("describe = %d\n%s", code, out)
	}
	// Flags before and after the name.
	out, _, code = runCtl(t, "topic", "create", "--partitions", "4", "logs", "--engine", "memory")
	if code != 0 || out != "created topic logs (engine memory, 4 partition(s))\n" {
		t.Errorf("create = %d %q", code, out)
	}
	out, _, code = runCtl(t, "topic", "delete", "sensors/a")
	if code != 0 || out != "deleted topic sensors/a\n" {
		t.Errorf("delete = %d %q", code, out)
	}
	// The server's error message, exit 1.
	_, errOut, code := runCtl(t, "topic", "create", "dup")
	if code != 1 || errOut != "quirectl: topic \"dup\": topics: already exists\n" {
		t.Errorf("create dup = %d %q", code, errOut)
	}
	_, errOut, code = runCtl(t, "topic", "delete", "nope")
	if code != 1 || !strings.Contains(errOut, "no such topic") {
		t.Errorf("delete nope = %d %q", code, errOut)
	}
	f.mu.Lock()
	want := []string{
		"GET /api/v1/cluster", "GET /api/v1/topics", "GET /api/v1/topics", "GET /api/v1/topics/sensors/a",
		`POST /api/v1/topics {"name":"logs","engine":"memory","partitions":4}`, "DELETE /api/v1/topics/sensors/a",
		`POST /api/v1/topics {"name":"dup","partitions":1}`, "DELETE /api/v1/topics/nope",
	}
	if strings.Join(f.reqs, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant\n%s", strings.Join(f.reqs, "\n"), strings.Join(want, "\n"))
	}
	f.mu.Unlock()
}

// --server given before the command survives the command's own flag set.
func TestGlobalFlagsAnywhere(t *testing.T) {
	f := &fakeNode{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	t.Setenv("QUIRE_SERVER", "127.0.0.1:1")
	for _, args := range [][]string{
		{"--server", srv.URL, "--json", "cluster", "status"},
		{"cluster", "status", "--server", srv.URL, "--json"},
		{"--json", "cluster", "status", "--server", srv.URL},
	} {
		out, errOut, code := runCtl(t, args...)
		if code != 0 || !strings.HasPrefix(out, `{"cluster_name":"c"`) {
			t.Errorf("%v = %d %q %q", args, code, out, errOut)
		}
	}
}

func TestUsage(t *testing.T) {
	t.Setenv("QUIRE_SERVER", "127.0.0.1:1")
	for _, c := range []struct {
		args []string
		code int
		out  string // substring of stdout (help) or stderr
	}{
		{[]string{"--help"}, 0, "topic create NAME"},
		{[]string{"topic", "list", "--help"}, 0, "Usage: quirectl topic list"},
		{[]string{"help"}, 0, "Commands:"},
		{nil, 2, "Commands:"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"topic"}, 2, "missing or unknown subcommand"},
		{[]string{"topic", "create"}, 2, "usage: quirectl topic create NAME"},
		{[]string{"topic", "create", "a", "b"}, 2, `unexpected argument "b"`},
		{[]string{"topic", "create", "a", "--partitions", "x"}, 2, "invalid value"},
		{[]string{"topic", "list", "--nope"}, 2, "flag provided but not defined: -nope"},
		{[]string{"cluster", "status"}, 1, "cannot reach the quire admin API at http://127.0.0.1:1"},
	} {
		out, errOut, code := runCtl(t, c.args...)
		if code != c.code || !strings.Contains(out+errOut, c.out) {
			t.Errorf("quirectl %v = %d\nstdout %q\nstderr %q\nwant %d and %q", c.args, code, out, errOut, c.code, c.out)
		}
	}
}

// ledger list prints a table of the node's answer and asks for only the
// under-replicated ledgers with --under-replicated.
func TestLedgerList(t *testing.T) {
	var queries []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		queries = append(queries, r.URL.RawQuery)
		if r.URL.Path != "/api/v1/ledgers" {
			w.WriteHeader(404)
			return
		}
		io.WriteString(w, `{"live_bookies":["a:1","b:1"],"auditor":"3","ledgers":[
			{"id":7,"state":"CLOSED","ensemble":2,"write_quorum":2,"ack_quorum":1,"last_entry":41,
			 "fragments":[{"first_entry":0,"bookies":["a:1","c:1"]},{"first_entry":30,"bookies":["a:1","b:1"]}],"missing":["c:1"]}]}`)
	}))
	defer srv.Close()
	t.Setenv("QUIRE_SERVER", srv.URL)
	out, errOut, code := runCtl(t, "ledger", "list", "--under-replicated")
	if code != 0 || !strings.Contains(out, "Live bookies:  a:1, b:1") || !strings.Contains(out, "Auditor:       node 3") ||
		!strings.Contains(out, "7   CLOSED  2/2/1    41    0:a:1,c:1 30:a:1,b:1  c:1") {
		t.Errorf("ledger list = %d %q\n%s", code, errOut, out)
	}
	if _, _, code := runCtl(t, "ledger", "list"); code != 0 {
		t.Errorf("ledger list without the flag = %d", code)
	}
	if strings.Join(queries, "|") != "under_replicated=true|" {
		t.Errorf("queries %q", queries)
	}
}
