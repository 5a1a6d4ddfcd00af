package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

const examplePath = "../../config/quire.example.toml"

func TestDefaultIsValid(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default() is invalid: %v", err)
	}
	c, err := Load("", Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Load(\"\") = %+v, want Default()", c)
	}
}

// The shipped example must configure exactly the defaults, so the
// documentation cannot drift from the code.
func TestExampleEqualsDefault(t *testing.T) {
	c, err := Load(examplePath, Overrides{})
	if err != nil {
		t.Fatalf("example config does not load: %v", err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("example config differs from Default():\n got %+v\nwant %+v", c, Default())
	}
}

// Every field of Config must be documented in the example: written as a key,
// or (fields of array-table entries) in the commented example block, which
// must itself be valid.
func TestExampleMentionsEveryField(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := buildIndex(data)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, k := range idx.Keys() {
		have[stripIndexes(k)] = true
	}
	// The commented example lines ("#   key = value") form a TOML snippet.
	var snippet strings.Builder
	for _, l := range strings.Split(string(data), "\n") {
		if s, ok := strings.CutPrefix(l, "#   "); ok && regexp.MustCompile(`^(\[\[|[a-z0-9_]+ = )`).MatchString(s) {
			snippet.WriteString(s + "\n")
		}
	}
	sidx, err := buildIndex([]byte(snippet.String()))
	if err != nil {
		t.Fatalf("commented example %q: %v", snippet.String(), err)
	}
	for _, k := range sidx.Keys() {
		have[stripIndexes(k)] = true
	}
	for _, f := range Fields() {
		if !have[f.Key] {
			t.Errorf("config field %s is not documented in %s", f.Key, examplePath)
		}
	}
	// The commented rule example is valid when uncommented.
	p := writeFile(t, string(data)+"\n"+snippet.String())
	c, err := Load(p, Overrides{})
	if err != nil {
		t.Fatalf("example with its commented rule block: %v", err)
	}
	if want := []Rule{{Match: "sensors/#", Engine: "memory"}, {Match: "orders/#", Engine: "journal", Ensemble: 3, WriteQuorum: 3, AckQuorum: 2},
		{Match: "scratch/#", Engine: "file", Offload: "none", OffloadDeleteLag: Duration(10 * time.Minute)}}; !reflect.DeepEqual(c.Storage.Rules, want) {
		t.Errorf("rules = %+v, want %+v", c.Storage.Rules, want)
	}
	if len(Fields()) < 25 {
		t.Errorf("Fields() found only %d fields", len(Fields()))
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "quire.toml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadValues(t *testing.T) {
	p := writeFile(t, `
node_id = 7
meta_addrs = ["7@10.0.0.7:1228"]
data_dir = "/var/lib/quire"
[log]
format = "json"
[mqtt]
ws = ""
[storage]
default_engine = "memory"
rules = [{ match = "orders/#", engine = "file" }]
[storage.file]
sync = "interval"
sync_interval = "250ms"
retention_age = "0s"
[[storage.rules]]
match = "sensors/+/temp"
engine = "memory"
`)
	c, err := Load(p, Overrides{})
	if err == nil {
		t.Fatalf("rules defined both inline and as an array table: want an error, got %+v", c)
	}
	p = writeFile(t, `
node_id = 7
meta_addrs = ["7@10.0.0.7:1228"]
data_dir = "/var/lib/quire"
[log]
format = "json"
[mqtt]
ws = ""
[bookie]
enabled = false
journal_dir = "/fast/journal"
max_group_wait = "1ms"
max_group_bytes = 262144
cookie_store = "/etc/quire/cookies.json"
[storage]
default_engine = "memory"
[storage.file]
sync = "interval"
sync_interval = "250ms"
retention_age = "0s"
[[storage.rules]]
match = "sensors/+/temp"
engine = "memory"
[[storage.rules]]
match = "#"
engine = "file"
`)
	c, err = Load(p, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.NodeID = 7
	want.MetaAddrs = []string{"7@10.0.0.7:1228"}
	want.DataDir = "/var/lib/quire"
	want.Log.Format = "json"
	want.MQTT.WS = ""
	want.Storage.DefaultEngine = "memory"
	want.Bookie = Bookie{Enabled: false, JournalDir: "/fast/journal", MaxGroupWait: Duration(time.Millisecond),
		MaxGroupBytes: 256 << 10, MaxEntrySize: 8 << 20, CookieStore: "/etc/quire/cookies.json",
		GCInterval: Duration(10 * time.Minute)}
	want.Storage.File.Sync = "interval"
	want.Storage.File.SyncInterval = Duration(250 * time.Millisecond)
	want.Storage.File.RetentionAge = 0
	want.Storage.Rules = []Rule{{Match: "sensors/+/temp", Engine: "memory"}, {Match: "#", Engine: "file"}}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	vs, err := c.Voters()
	if err != nil || len(vs) != 1 || vs[0] != (Voter{ID: 7, Addr: "10.0.0.7:1228"}) {
		t.Errorf("Voters() = %v, %v", vs, err)
	}

	// Three voters, this node among them, and short Raft timings.
	p = writeFile(t, `
node_id = 2
meta_addrs = ["1@10.0.0.1:1228", "2@10.0.0.2:1228", "3@10.0.0.3:1228"]
[meta]
heartbeat_timeout = "200ms"
election_timeout = "300ms"
leader_lease_timeout = "100ms"
node_lease_ttl = "3s"
leader_wait_timeout = "20s"
`)
	c, err = Load(p, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if vs, err := c.Voters(); err != nil || len(vs) != 3 || vs[1] != (Voter{ID: 2, Addr: "10.0.0.2:1228"}) {
		t.Errorf("Voters() = %v, %v", vs, err)
	}
	if want := (Meta{HeartbeatTimeout: Duration(200 * time.Millisecond), ElectionTimeout: Duration(300 * time.Millisecond),
		LeaderLeaseTimeout: Duration(100 * time.Millisecond), NodeLeaseTTL: Duration(3 * time.Second),
		LeaderWaitTimeout: Duration(20 * time.Second)}); c.Meta != want {
		t.Errorf("meta = %+v, want %+v", c.Meta, want)
	}
	if got := Default().MetaAddrs; len(got) != 1 || got[0] != "1@127.0.0.1:1228" {
		t.Errorf("Load changed the default's meta_addrs: %v", got)
	}
}

func TestOverrides(t *testing.T) {
	p := writeFile(t, "node_id = 3\nmeta_addrs = [\"3@127.0.0.1:1228\"]\ndata_dir = \"/a\"\n")
	c, err := Load(p, Overrides{DataDir: "/b", LogFormat: "json", LogLevel: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/b" || c.NodeID != 3 || c.Log.Format != "json" || c.Log.Level != "debug" {
		t.Errorf("overrides not applied: %+v", c)
	}
	// An invalid flag value is reported as the flag's, not the file's.
	_, err = Load(p, Overrides{LogFormat: "xml"})
	var ce *Error
	if !errors.As(err, &ce) || ce.Source != "flag --log-format" || !strings.HasPrefix(err.Error(), "flag --log-format: log.format: ") {
		t.Errorf("err = %v, want one naming flag --log-format", err)
	}
	// --node-id that is not the single voter.
	_, err = Load("", Overrides{NodeID: 2})
	if err == nil || !strings.Contains(err.Error(), "meta_addrs") || !strings.Contains(err.Error(), "node_id = 2") {
		t.Errorf("err = %v, want the voter mismatch", err)
	}
}

// Each error names the file, the key and the line (and column) of the
// mistake, as FILE:LINE:COL: KEY: message.
func TestErrorsNameFileKeyLine(t *testing.T) {
	cases := []struct {
		name, doc string
		key       string
		line      int
		msg       string // substring of the message
	}{
		{"unknown top-level key", "cluster_name = \"x\"\nnodeid = 1\n", "nodeid", 2, `unknown key (did you mean "node_id"?)`},
		{"unknown table key", "[storage.file]\nsync = \"batch\"\nsyncc = \"none\"\n", "storage.file.syncc", 3, `unknown key (did you mean "storage.file.sync"?)`},
		{"unknown table", "[stroage]\ndefault_engine = \"file\"\n", "stroage", 1, "unknown key"},
		{"unknown key in array table", "[[storage.rules]]\nmatch = \"a\"\nengine = \"file\"\n[[storage.rules]]\nmatch = \"b\"\nengin = \"file\"\n", "storage.rules[1].engin", 6, "unknown key"},
		{"wrong type", "\n\nnode_id = \"one\"\n", "node_id", 3, "cannot decode TOML string into struct field"},
		{"negative uint", "node_id = -1\n", "node_id", 1, "negative integer"},
		{"wrong type in table", "[admin]\naddr = 58080\n", "admin.addr", 2, "cannot decode TOML integer"},
		{"unparsable duration", "[storage.file]\n\nsync_interval = \"fast\"\n", "storage.file.sync_interval", 3, `invalid duration "fast"`},
		{"duration as integer", "[storage.file]\nsegment_age = 100\n", "storage.file.segment_age", 2, "a duration must be a string"},
		{"negative duration", "[storage.file]\nretention_age = \"-1h\"\n", "storage.file.retention_age", 2, "must be >= 0"},
		{"bad memory limit", "node_id = 1\nmemory_limit = \"lots\"\n", "memory_limit", 2, `"lots" is not "0", a percentage`},
		{"memory limit as integer", "memory_limit = 1073741824\n", "memory_limit", 1, "cannot decode TOML integer"},
		{"bad filter", "[[storage.rules]]\nmatch = \"a/#/b\"\nengine = \"memory\"\n", "storage.rules[0].match", 2, "'#' must be the last level"},
		{"unknown rule engine", "[[storage.rules]]\nmatch = \"a\"\nengine = \"memory\"\n\n[[storage.rules]]\nmatch = \"b\"\nengine = \"kafka\"\n", "storage.rules[1].engine", 7, `unknown engine "kafka" (this build has file, hdfs, journal, memory, s3)`},
		{"unknown inline rule engine", "[storage]\nrules = [\n  { match = \"x/#\", engine = \"nope\" },\n]\n", "storage.rules[0].engine", 3, `unknown engine "nope"`},
		{"unknown default engine", "[storage]\ndefault_engine = \"cassandra\"\n", "storage.default_engine", 2, `unknown engine "cassandra"`},
		{"s3 engine without a bucket", "[storage]\ndefault_engine = \"s3\"\n[storage.s3]\nendpoint = \"127.0.0.1:9000\"\n", "storage.s3.bucket", 3, "is required: topics are routed to engine \"s3\""},
		{"hdfs rule without a namenode", "[[storage.rules]]\nmatch = \"logs/#\"\nengine = \"hdfs\"\n", "storage.hdfs.namenode", 0, "is required: topics are routed to engine \"hdfs\""},
		{"unknown offload", "[storage.file]\noffload = \"ftp\"\n", "storage.file.offload", 2, `"ftp" is not "", "none" or one of s3`},
		{"negative offload lag", "[storage.file]\noffload_delete_lag = \"-1s\"\n", "storage.file.offload_delete_lag", 2, "must be >= 0"},
		{"offload without s3 bucket", "[storage.file]\noffload = \"s3\"\n[storage.s3]\nendpoint = \"127.0.0.1:9000\"\n", "storage.s3.bucket", 3, "is required"},
		{"rule offload on another engine", "[[storage.rules]]\nmatch = \"a\"\nengine = \"memory\"\noffload = \"s3\"\n[storage.s3]\nendpoint = \"e\"\nbucket = \"b\"\n", "storage.rules[0].offload", 4, `applies to engines "file" and "journal" only`},
		{"unknown journal offload", "[storage.journal]\noffload = \"ftp\"\n", "storage.journal.offload", 2, `"ftp" is not "", "none" or one of s3`},
		{"negative journal offload lag", "[storage.journal]\noffload_delete_lag = \"-1s\"\n", "storage.journal.offload_delete_lag", 2, "must be >= 0"},
		{"rule quorum on another engine", "[[storage.rules]]\nmatch = \"a\"\nengine = \"file\"\nensemble = 3\n", "storage.rules[0].engine", 3, `apply to engine "journal" only`},
		{"rule ack above write quorum", "[[storage.rules]]\nmatch = \"a\"\nengine = \"journal\"\nensemble = 3\nwrite_quorum = 2\nack_quorum = 3\n", "storage.rules[0].write_quorum", 5, "need ensemble >= write_quorum >= ack_quorum >= 1, have 3/2/3"},
		{"rule ensemble below inherited quorum", "[storage.journal]\nensemble = 3\nwrite_quorum = 3\nack_quorum = 2\n\n[[storage.rules]]\nmatch = \"a\"\nengine = \"journal\"\nensemble = 2\n", "storage.rules[0].ensemble", 9, "have 2/3/2"},
		{"journal write quorum above ensemble", "[storage.journal]\nensemble = 2\nwrite_quorum = 3\n", "storage.journal.ensemble", 2, "need ensemble >= write_quorum >= ack_quorum >= 1, have 2/3/1"},
		{"negative ack quorum", "[storage.journal]\nack_quorum = -1\n", "storage.journal.ack_quorum", 2, "must be >= 0 (0 = automatic)"},
		{"negative ledger bytes", "[storage.journal]\nledger_bytes = -1\n", "storage.journal.ledger_bytes", 2, "must be >= 0"},
		{"negative segment size", "[storage.file]\nsegment_bytes = -1\n", "storage.file.segment_bytes", 2, "must be >= 1024"},
		{"negative retention size", "[storage.file]\nretention_bytes = -5\n", "storage.file.retention_bytes", 2, "must be >= 0"},
		{"zero group wait", "[bookie]\nmax_group_wait = \"0s\"\n", "bookie.max_group_wait", 2, "must be > 0"},
		{"small group", "[bookie]\nenabled = false\nmax_group_bytes = 100\n", "bookie.max_group_bytes", 3, "must be >= 4096"},
		{"huge entries", "[bookie]\nmax_entry_size = 100000000\n", "bookie.max_entry_size", 2, "must be from 1 to 67108864"},
		{"zero memory budget", "[storage.memory]\nshard_budget_bytes = 0\n", "storage.memory.shard_budget_bytes", 2, "must be > 0"},
		{"bad sync policy", "storage.file.sync = \"sometimes\"\n", "storage.file.sync", 1, `"sometimes" is not one of batch, interval, none`},
		{"bad listener address", "[mqtt]\ntcp = \"1883\"\n", "mqtt.tcp", 2, "not HOST:PORT"},
		{"plain-text password", "[[mqtt.users]]\nname = \"a\"\npassword_hash = \"secret\"\n", "mqtt.users[0].password_hash", 3, "not a bcrypt hash"},
		{"acl permission", "[[mqtt.acl]]\npermission = \"maybe\"\naction = \"all\"\ntopics = [\"a\"]\n", "mqtt.acl[0].permission", 2, `must be "allow" or "deny"`},
		{"acl filter", "[[mqtt.acl]]\npermission = \"allow\"\naction = \"publish\"\ntopics = [\"a/#/b\"]\n", "mqtt.acl[0].topics", 4, "'#' must be the last level"},
		{"acl default", "[mqtt]\nacl_default = \"open\"\n", "mqtt.acl_default", 2, `must be "allow" or "deny"`},
		{"hook url", "[mqtt]\nauth_hook_url = \"localhost:80\"\n", "mqtt.auth_hook_url", 2, "http:// or https://"},
		{"bad port", "[kafka]\naddr = \":99999\"\n", "kafka.addr", 2, "not a number from 0 to 65535"},
		{"empty admin address", "[admin]\naddr = \"\"\n", "admin.addr", 2, "must not be empty"},
		{"bad voter", "meta_addrs = [\n  \"1@127.0.0.1:1228\",\n  \"two@h:1\",\n]\n", "meta_addrs[1]", 3, `node id "two" must be an integer`},
		{"not among three voters", "node_id = 4\nmeta_addrs = [\"1@a:1228\", \"2@b:1228\", \"3@c:1228\"]\n", "meta_addrs", 2, "this node (node_id = 4) is not one of the meta voters (node ids 1, 2, 3)"},
		{"not the voter", "node_id = 2\n", "meta_addrs", 0, "this node (node_id = 2) is not one of the meta voters (node ids 1)"},
		{"lease longer than heartbeat", "[meta]\nheartbeat_timeout = \"100ms\"\nleader_lease_timeout = \"200ms\"\n", "meta.leader_lease_timeout", 3, "must be from 5ms to meta.heartbeat_timeout (100ms)"},
		{"short node lease", "[meta]\nnode_lease_ttl = \"500ms\"\n", "meta.node_lease_ttl", 2, "must be >= 1s"},
		{"zero leader wait", "[meta]\nleader_wait_timeout = \"0s\"\n", "meta.leader_wait_timeout", 2, "must be > 0"},
		{"bad log format", "[log]\nlevel = \"info\"\nformat = \"xml\"\n", "log.format", 3, `"xml" is not one of text, json`},
		{"syntax error", "node_id = 1\ncluster_name = \n", "cluster_name", 2, "expected"},
		{"bad array element type", "meta_addrs = [1]\n", "meta_addrs[0]", 1, "cannot decode TOML integer"},
		{"unknown key in inline rule", "[storage]\nrules = [\n  { match = \"a\", engine = \"file\" },\n  { match = \"b\", engine = \"file\", prio = 1 },\n]\n", "storage.rules[1].prio", 4, "unknown key"},
		{"duplicate key", "node_id = 1\nnode_id = 2\n", "node_id", 2, "already"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, tc.doc)
			c, err := Load(p, Overrides{})
			if err == nil {
				t.Fatalf("loaded %+v, want an error", c)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("err %T %v is not an *Error", err, err)
			}
			if ce.File != p || ce.Key != tc.key || ce.Line != tc.line {
				t.Errorf("error at file %q key %q line %d, want %q %q %d (%v)", ce.File, ce.Key, ce.Line, p, tc.key, tc.line, err)
			}
			prefix := fmt.Sprintf("%s:%d:", p, tc.line)
			if tc.line == 0 {
				prefix = p + ": "
			}
			if s := err.Error(); !strings.HasPrefix(s, prefix) || !strings.Contains(s, tc.key+": ") && !strings.Contains(s, tc.key+" (default value): ") || !strings.Contains(s, tc.msg) {
				t.Errorf("error text %q: want prefix %q, key %q and %q", s, prefix, tc.key, tc.msg)
			}
		})
	}
}

func TestEveryErrorReported(t *testing.T) {
	p := writeFile(t, "[mqtt]\ntcp = \"x\"\ntls = \"y\"\n[storage.file]\nsegment_bytes = -1\n")
	_, err := Load(p, Overrides{})
	lines := strings.Split(fmt.Sprint(err), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 errors, one per line, got %q", err)
	}
	for i, want := range []string{":2:1: mqtt.tcp: ", ":3:1: mqtt.tls: ", ":5:1: storage.file.segment_bytes: "} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d = %q, want %q", i, lines[i], want)
		}
	}
}

func TestMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.toml")
	_, err := Load(p, Overrides{})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(fmt.Sprint(err), p) || !strings.Contains(fmt.Sprint(err), "no such file") {
		t.Errorf("err = %v", err)
	}
}

// memory_limit: "0" or nothing, a percentage, or a size with a unit.
func TestParseMemoryLimit(t *testing.T) {
	if d := Default().MemoryLimit; d != "80%" {
		t.Errorf("default memory_limit = %q, want \"80%%\"", d)
	}
	for _, c := range []struct {
		in      string
		bytes   int64
		percent float64
		err     string
	}{
		{"", 0, 0, ""},
		{"0", 0, 0, ""},
		{"80%", 0, 80, ""},
		{" 12.5 % ", 0, 12.5, ""},
		{"100%", 0, 100, ""},
		{"0%", 0, 0, "a percentage must be in (0, 100]"},
		{"101%", 0, 0, "a percentage must be in (0, 100]"},
		{"x%", 0, 0, "a percentage must be in (0, 100]"},
		{"2GiB", 2 << 30, 0, ""},
		{"2 gib", 2 << 30, 0, ""},
		{"1500MB", 1500e6, 0, ""},
		{"64MiB", 64 << 20, 0, ""},
		{"1TB", 1e12, 0, ""},
		{"536870912", 512 << 20, 0, ""},
		{"536870912B", 512 << 20, 0, ""},
		{"63MiB", 0, 0, "below the smallest limit"},
		{"1.5GiB", 0, 0, "is not \"0\""},
		{"2GB2", 0, 0, "is not \"0\""},
		{"GiB", 0, 0, "is not \"0\""},
		{"-1GiB", 0, 0, "is not \"0\""},
		{"2PiB", 0, 0, "is not \"0\""},
		{"99999999999TiB", 0, 0, "too large"},
	} {
		b, p, err := ParseMemoryLimit(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseMemoryLimit(%q) = %d, %v, %v; want an error with %q", c.in, b, p, err, c.err)
			}
			continue
		}
		if err != nil || b != c.bytes || p != c.percent {
			t.Errorf("ParseMemoryLimit(%q) = %d, %v, %v; want %d, %v", c.in, b, p, err, c.bytes, c.percent)
		}
	}
	c, err := Load(writeFile(t, "memory_limit = \"2GiB\"\n"), Overrides{})
	if err != nil || c.MemoryLimit != "2GiB" {
		t.Errorf("Load memory_limit = \"2GiB\": %+v, %v", c, err)
	}
}

func TestDuration(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil || d.Std() != 90*time.Second {
		t.Errorf("got %v, %v", d, err)
	}
	if b, _ := d.MarshalText(); string(b) != "1m30s" {
		t.Errorf("MarshalText = %q", b)
	}
}

// [storage.journal]'s automatic replication is 1/1/1 for one meta voter
// and 3/2/2 for several; set fields win, and a rule's fields win over
// [storage.journal]'s.
func TestJournalQuorum(t *testing.T) {
	c := Default()
	if q := c.JournalQuorum(); q != (Quorum{1, 1, 1}) {
		t.Errorf("single node: %+v, want 1/1/1", q)
	}
	c.MetaAddrs = []string{"1@a:1228", "2@b:1228", "3@c:1228"}
	if q := c.JournalQuorum(); q != (Quorum{3, 2, 2}) {
		t.Errorf("three nodes: %+v, want 3/2/2", q)
	}
	c.Storage.Journal.Ensemble = 5
	if q := c.JournalQuorum(); q != (Quorum{5, 2, 2}) {
		t.Errorf("ensemble 5: %+v, want 5/2/2", q)
	}
	r := Rule{Match: "a", Engine: "journal", WriteQuorum: 3}
	if q := r.Quorum(c.JournalQuorum()); q != (Quorum{5, 3, 2}) {
		t.Errorf("rule write_quorum 3: %+v, want 5/3/2", q)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestOffloadRules(t *testing.T) {
	p := writeFile(t, `[storage.file]
offload = "s3"
offload_delete_lag = "2h"
[storage.journal]
offload = "s3"
offload_delete_lag = "3h"
[storage.s3]
endpoint = "127.0.0.1:9000"
bucket = "quire"
[[storage.rules]]
match = "local/#"
engine = "file"
offload = "none"
[[storage.rules]]
match = "fast/#"
engine = "file"
offload_delete_lag = "1m"
[[storage.rules]]
match = "keep/#"
engine = "journal"
offload = "none"
[[storage.rules]]
match = "orders/#"
engine = "journal"
offload_delete_lag = "5m"
`)
	c, err := Load(p, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		engine, topic, target string
		lag                   time.Duration
	}{{"file", "other", "s3", 2 * time.Hour}, {"file", "local/a", "", 2 * time.Hour}, {"file", "fast/x", "s3", time.Minute},
		{"journal", "other", "s3", 3 * time.Hour}, {"journal", "keep/a", "", 3 * time.Hour}, {"journal", "orders/eu", "s3", 5 * time.Minute},
		{"memory", "other", "", 0}} {
		if target, lag := c.Offload(tc.engine, tc.topic); target != tc.target || lag != tc.lag {
			t.Errorf("Offload(%q, %q) = %q, %v; want %q, %v", tc.engine, tc.topic, target, lag, tc.target, tc.lag)
		}
	}
	if lag := Default().Storage.Journal.OffloadDeleteLag.Std(); lag != time.Hour {
		t.Errorf("default journal offload_delete_lag %v, want 1h", lag)
	}
	if !c.UsesOffload("s3") || Default().UsesOffload("s3") {
		t.Error("UsesOffload is wrong")
	}
}
