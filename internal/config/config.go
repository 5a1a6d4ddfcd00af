// Package config is the node's configuration: the TOML file format, its
// defaults, and validation that names the file, key and line of every
// mistake.
//
// Usage:
//
//	cfg, err := config.Load("quire.toml", config.Overrides{DataDir: "/var/lib/quire"})
//	if err != nil {
//		// err lists every problem, one per line, as
//		//   quire.toml:12:1: storage.file.sync_interval: invalid duration "fast": ...
//		// errors.Is(err, config.ErrInvalid) is true.
//	}
//	cfg := config.Default() // what `quire start` runs with no --config
//
// The file format is documented, key by key with its default, in
// config/quire.example.toml at the repository root; a test checks that the
// example loads to exactly Default() and mentions every field, so the two
// cannot drift apart.
//
// Decoding starts from Default(), so a key left out of the file keeps its
// default. Unknown keys are errors (a misspelt key silently ignored is the
// worst kind of config bug). Validation is split from decoding: Validate
// reports semantic problems by key, and Load attaches the file position of
// each key by walking the document with go-toml's unstable parser.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/quiremq/quire/frontends/auth"
	"github.com/quiremq/quire/shard"
)

// Config is the configuration of one node. Field tags are the TOML keys.
type Config struct {
	// NodeID identifies the node in its cluster; 1 or more.
	NodeID uint64 `toml:"node_id"`
	// ClusterName names the cluster; nodes of different clusters refuse to
	// talk to each other (once there is more than one node).
	ClusterName string `toml:"cluster_name"`
	// DataDir holds all of the node's data; it is locked while the node runs.
	DataDir string `toml:"data_dir"`
	// MetaAddrs lists the meta (Raft) voters as "ID@HOST:PORT", HOST:PORT
	// being the voter's inner gRPC address. NodeID must be one of them. One
	// voter (the default) is a cluster by itself; every voter of a real
	// cluster lists the same voters.
	MetaAddrs []string `toml:"meta_addrs"`
	// MemoryLimit is the Go runtime's soft memory limit
	// (runtime/debug.SetMemoryLimit), set when the node starts: a share of
	// the memory the process may use ("80%": of its cgroup's memory limit,
	// else of the machine's memory), a size ("2GiB", "1500MB", bytes), or
	// "0" for none. Near the limit the garbage collector runs more often
	// instead of letting the heap grow to twice what is live (GOGC=100);
	// it bounds the runtime's memory only, not memory held outside it. The
	// GOMEMLIMIT environment variable, when set, wins. See
	// ParseMemoryLimit.
	MemoryLimit string `toml:"memory_limit"`

	Meta Meta `toml:"meta"`

	Log     Log     `toml:"log"`
	GRPC    GRPC    `toml:"grpc"`
	Admin   Admin   `toml:"admin"`
	MQTT    MQTT    `toml:"mqtt"`
	Kafka   Kafka   `toml:"kafka"`
	AMQP    AMQP    `toml:"amqp"`
	Bookie  Bookie  `toml:"bookie"`
	Storage Storage `toml:"storage"`
}

// Log configures the node's structured log (written to stderr).
type Log struct {
	// Level is one of debug, info, warn, error.
	Level string `toml:"level"`
	// Format is text (logfmt-like key=value) or json (one object per line).
	Format string `toml:"format"`
}

// GRPC configures the inner gRPC server (node to node, and the standard
// gRPC health service).
type GRPC struct {
	Addr string `toml:"addr"`
}

// Admin configures the admin HTTP server: JSON API, /healthz, /readyz and
// Prometheus /metrics.
type Admin struct {
	Addr string `toml:"addr"`
	// Pprof serves Go's runtime profiles (CPU, heap, goroutines, execution
	// trace) under /debug/pprof/ on the admin address. Off by default.
	Pprof bool `toml:"pprof"`
}

// MQTT holds the MQTT listener addresses; "" turns a listener off. The TLS
// and WSS listeners need a certificate and key; without them they are not
// served (the node says so at start).
type MQTT struct {
	TCP  string `toml:"tcp"`
	TLS  string `toml:"tls"`
	WS   string `toml:"ws"`
	WSS  string `toml:"wss"`
	QUIC string `toml:"quic"`
	// TLSCertFile and TLSKeyFile are the PEM certificate chain and key of
	// the TLS and WSS listeners.
	TLSCertFile string `toml:"tls_cert_file"`
	TLSKeyFile  string `toml:"tls_key_file"`
	// TLSClientCAFile, when set, makes the TLS and WSS listeners require a
	// client certificate signed by one of its CAs.
	TLSClientCAFile string `toml:"tls_client_ca_file"`

	// AllowAnonymous lets clients without a user name connect when no
	// user table entry or hook decides for them.
	AllowAnonymous bool `toml:"allow_anonymous"`
	// Users are the user names and bcrypt password hashes clients
	// authenticate with.
	Users []MQTTUser `toml:"users"`
	// AuthHookURL, when set, is asked (HTTP POST, JSON) about clients the
	// user table does not know; AuthHookTimeout bounds each request.
	AuthHookURL     string   `toml:"auth_hook_url"`
	AuthHookTimeout Duration `toml:"auth_hook_timeout"`
	// ACLDefault ("allow" or "deny") decides a publish or subscribe no ACL
	// rule matches.
	ACLDefault string `toml:"acl_default"`
	// ACL rules, tried in order; the first that matches decides.
	ACL []ACLRule `toml:"acl"`

	// Per-client limits.
	MaxInflight    int     `toml:"max_inflight"`     // unacknowledged outbound QoS 1/2 messages per session
	MaxQueued      int     `toml:"max_queued"`       // messages waiting per session; more are dropped (counted)
	MaxPacketSize  int     `toml:"max_packet_size"`  // bytes; a larger packet closes the connection (0x95)
	MaxPublishRate float64 `toml:"max_publish_rate"` // PUBLISH/s per connection, 0 = no limit; excess is slowed
	MaxKeepAlive   int     `toml:"max_keep_alive"`   // seconds, 0 = no cap; a v5 client asking for more (or 0) gets this as Server Keep Alive
}

// MQTTUser is one [[mqtt.users]] entry: a bcrypt hash for user name and
// password in CONNECT, SCRAM-SHA-256 credentials for MQTT 5 enhanced
// authentication, or both.
type MQTTUser struct {
	Name         string `toml:"name"`
	PasswordHash string `toml:"password_hash"`
	SCRAMSHA256  string `toml:"scram_sha256"`
}

// ACLRule is one [[mqtt.acl]] entry.
type ACLRule struct {
	Permission string   `toml:"permission"` // allow or deny
	Action     string   `toml:"action"`     // publish, subscribe or all
	Username   string   `toml:"username"`   // "" = any
	ClientID   string   `toml:"clientid"`   // "" = any
	Topics     []string `toml:"topics"`     // filters; %u = user name, %c = client id
}

// TLSConfigured reports whether the MQTT TLS and WSS listeners have a
// certificate and key.
func (m *MQTT) TLSConfigured() bool { return m.TLSCertFile != "" && m.TLSKeyFile != "" }

// Kafka holds the Kafka listener address; "" turns it off.
type Kafka struct {
	Addr string `toml:"addr"`
}

// AMQP holds the AMQP listener address; "" turns it off.
type AMQP struct {
	Addr string `toml:"addr"`
}

// Meta tunes the node's meta service (Raft; package meta). The voters are
// MetaAddrs.
type Meta struct {
	// HeartbeatTimeout is how long a follower waits without hearing from
	// the leader before it starts an election.
	HeartbeatTimeout Duration `toml:"heartbeat_timeout"`
	// ElectionTimeout is how long a candidate waits for votes before it
	// starts another election.
	ElectionTimeout Duration `toml:"election_timeout"`
	// LeaderLeaseTimeout is how long a leader stays leader without
	// hearing from a quorum (at most HeartbeatTimeout).
	LeaderLeaseTimeout Duration `toml:"leader_lease_timeout"`
	// NodeLeaseTTL is the TTL of the lease under which this node registers
	// itself (heartbeat every third of it): a node that stops heartbeating
	// is shown as down this long after. At least 1s; it should exceed a few
	// election timeouts.
	NodeLeaseTTL Duration `toml:"node_lease_ttl"`
	// LeaderWaitTimeout bounds how long a starting node waits for a meta
	// leader (a majority of the voters up and reachable) before it gives up
	// and exits with an error.
	LeaderWaitTimeout Duration `toml:"leader_wait_timeout"`
}

// Bookie configures the journal's storage server (journal/bookie), which the
// node runs — the node's "bookie" role — when Enabled. It keeps its entry
// logs and index in <data_dir>/bookie and serves journal.v1.Bookie on the
// inner gRPC server; its bookie id is this node's address in meta_addrs.
type Bookie struct {
	// Enabled runs the bookie on this node.
	Enabled bool `toml:"enabled"`
	// JournalDir holds the bookie's journal (write-ahead log); "" means
	// <data_dir>/bookie/journal. A separate device keeps journal syncs off
	// the entry-log traffic.
	JournalDir string `toml:"journal_dir"`
	// MaxGroupWait is how long the oldest add of a group commit may wait
	// before the group is written and fdatasync'ed ...
	MaxGroupWait Duration `toml:"max_group_wait"`
	// MaxGroupBytes ... or how many bytes a group may hold, whichever first.
	MaxGroupBytes int `toml:"max_group_bytes"`
	// MaxEntrySize bounds one entry's payload (at most MaxBookieEntrySize).
	MaxEntrySize int `toml:"max_entry_size"`
	// CookieStore is the file that remembers the bookie's cookie outside
	// its directories, so that a wiped or replaced bookie directory refuses
	// to start; "" means the meta service (cluster-wide, so a wiped
	// data_dir as a whole is detected too). A file path keeps the cookies in
	// that file instead, as `quire bookie` does.
	CookieStore string `toml:"cookie_store"`
	// GCInterval: this often the node's bookie deletes the ledgers it
	// holds that meta no longer has (deleted while the bookie was down or
	// unreachable) and the closed ledgers that no longer name it, once two
	// passes in a row found them so; "0s" = never.
	GCInterval Duration `toml:"gc_interval"`
}

// MaxBookieEntrySize is the largest bookie.max_entry_size (the bookie's
// on-disk format limit, journal/bookie.MaxEntrySizeLimit).
const MaxBookieEntrySize = 64 << 20

// Storage chooses and configures the storage engines.
type Storage struct {
	// DefaultEngine stores every topic no rule matches.
	DefaultEngine string `toml:"default_engine"`
	// Rules route topics to engines by MQTT topic filter; the first rule
	// whose filter matches the topic name wins.
	Rules   []Rule         `toml:"rules"`
	Memory  MemoryStorage  `toml:"memory"`
	File    FileStorage    `toml:"file"`
	Journal JournalStorage `toml:"journal"`
	S3      S3Storage      `toml:"s3"`
	HDFS    HDFSStorage    `toml:"hdfs"`
}

// UsesEngine reports whether the default engine or a rule is engine.
func (c *Config) UsesEngine(engine string) bool {
	if c.Storage.DefaultEngine == engine {
		return true
	}
	for _, r := range c.Storage.Rules {
		if r.Engine == engine {
			return true
		}
	}
	return false
}

// Rule routes the topics matching Match (an MQTT topic filter: '+' one
// level, '#' any number of trailing levels) to Engine. A rule for the
// journal engine may set the replication of its topics' shards; 0 keeps
// [storage.journal]'s.
type Rule struct {
	Match       string `toml:"match"`
	Engine      string `toml:"engine"`
	Ensemble    int    `toml:"ensemble"`
	WriteQuorum int    `toml:"write_quorum"`
	AckQuorum   int    `toml:"ack_quorum"`
	// Offload and OffloadDeleteLag override [storage.file]'s (or
	// [storage.journal]'s) for the file (journal) shards of the rule's
	// topics: "" inherits, "none" keeps them local, "s3" offloads; a lag
	// of 0 inherits.
	Offload          string   `toml:"offload"`
	OffloadDeleteLag Duration `toml:"offload_delete_lag"`
}

// OffloadTargets are the values of offload (besides "" and "none").
var OffloadTargets = []string{"s3"}

// Offload returns where the shards of topic on engine ("file" or
// "journal") offload ("": they stay local) and how long their local copy
// (a file segment, a journal ledger on the bookies) is kept after: the
// first rule matching the topic decides, over [storage.<engine>]'s. Other
// engines never offload.
func (c *Config) Offload(engine, topic string) (target string, deleteLag time.Duration) {
	switch engine {
	case "file":
		return c.ruleOffload(topic, c.Storage.File.Offload, c.Storage.File.OffloadDeleteLag.Std())
	case "journal":
		return c.ruleOffload(topic, c.Storage.Journal.Offload, c.Storage.Journal.OffloadDeleteLag.Std())
	}
	return "", 0
}

func (c *Config) ruleOffload(topic, target string, deleteLag time.Duration) (string, time.Duration) {
	for i := range c.Storage.Rules {
		r := &c.Storage.Rules[i]
		if shard.MatchFilter(r.Match, topic) {
			if r.Offload != "" {
				target = r.Offload
			}
			if r.OffloadDeleteLag != 0 {
				deleteLag = r.OffloadDeleteLag.Std()
			}
			break
		}
	}
	if target == "none" {
		target = ""
	}
	return target, deleteLag
}

// UsesOffload reports whether any topic may offload to target.
func (c *Config) UsesOffload(target string) bool {
	if c.Storage.File.Offload == target || c.Storage.Journal.Offload == target {
		return true
	}
	for _, r := range c.Storage.Rules {
		if r.Offload == target {
			return true
		}
	}
	return false
}

// S3Storage is the S3 (or MinIO, or compatible) bucket that the s3 engine
// and offload write to.
type S3Storage struct {
	// Endpoint is "host:port" or an http(s):// URL.
	Endpoint string `toml:"endpoint"`
	Bucket   string `toml:"bucket"`
	// Region; "" = us-east-1.
	Region string `toml:"region"`
	// AccessKey and SecretKey; both "" = the environment
	// (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, MINIO_ROOT_USER/...,
	// ~/.aws/credentials).
	AccessKey string `toml:"access_key"`
	SecretKey string `toml:"secret_key"`
	// PathStyle addresses the bucket as endpoint/bucket (MinIO).
	PathStyle bool `toml:"path_style"`
	TLS       bool `toml:"tls"`
	// Prefix starts every object key this node writes (its node id
	// follows, so nodes can share a bucket).
	Prefix string `toml:"prefix"`
	// The s3 engine batches appends into objects: an object is written
	// once FlushBytes wait or the first waited FlushInterval.
	FlushInterval Duration `toml:"flush_interval"`
	FlushBytes    int      `toml:"flush_bytes"`
}

// HDFSStorage is the HDFS cluster the hdfs engine stores topics in.
type HDFSStorage struct {
	// Namenode is "host:port" of the namenode.
	Namenode string `toml:"namenode"`
	// Path is the directory under which Quire keeps its files.
	Path string `toml:"path"`
	// User is the HDFS user ("" = the process's user).
	User string `toml:"user"`
}

// JournalStorage configures engines/journal: the replication of each
// shard's ledgers and when a shard rolls over to a new ledger.
type JournalStorage struct {
	// Ensemble (E), WriteQuorum (Qw) and AckQuorum (Qa): each entry goes
	// to Qw of E bookies and is acknowledged once Qa have it; E >= Qw >=
	// Qa >= 1. 0 means automatic: 3/2/2 when meta_addrs lists several
	// nodes, 1/1/1 when it lists one (a single node has one bookie).
	Ensemble    int `toml:"ensemble"`
	WriteQuorum int `toml:"write_quorum"`
	AckQuorum   int `toml:"ack_quorum"`
	// LedgerBytes, LedgerEntries and LedgerAge roll a shard over to a new
	// ledger at this many payload bytes, entries or this age (0 = no
	// limit). Trim and retention delete whole ledgers.
	LedgerBytes   int64    `toml:"ledger_bytes"`
	LedgerEntries int64    `toml:"ledger_entries"`
	LedgerAge     Duration `toml:"ledger_age"`
	// RetentionAge deletes a shard's oldest ledgers, whole, once every
	// record in them is older (by timestamp); 0 = keep forever.
	RetentionAge Duration `toml:"retention_age"`
	// Offload copies closed ledgers to an object store ("s3": the bucket
	// of [storage.s3]); "" or "none" keeps them on the bookies. Rules may
	// override.
	Offload string `toml:"offload"`
	// OffloadDeleteLag is how long a ledger stays on the bookies after
	// its offload; "0s" drops it at once.
	OffloadDeleteLag Duration `toml:"offload_delete_lag"`
	// RereplicateAfter: a bookie missing from meta's live bookies this
	// long is lost, and the copies closed ledgers kept on it are made
	// again on other bookies (journal/client.Auditor); "0s" = never.
	RereplicateAfter Duration `toml:"rereplicate_after"`
}

// Quorum is a journal replication: E, Qw, Qa.
type Quorum struct{ Ensemble, WriteQuorum, AckQuorum int }

// JournalQuorum is [storage.journal]'s replication with its automatic
// (0) fields resolved: 3/2/2 for a cluster of several meta voters, 1/1/1
// for a single node.
func (c *Config) JournalQuorum() Quorum {
	auto := Quorum{3, 2, 2}
	if len(c.MetaAddrs) <= 1 {
		auto = Quorum{1, 1, 1}
	}
	j := c.Storage.Journal
	pick := func(v, d int) int {
		if v == 0 {
			return d
		}
		return v
	}
	return Quorum{pick(j.Ensemble, auto.Ensemble), pick(j.WriteQuorum, auto.WriteQuorum), pick(j.AckQuorum, auto.AckQuorum)}
}

// Quorum is the replication of the journal topics r matches: its own
// fields over base (JournalQuorum()).
func (r *Rule) Quorum(base Quorum) Quorum {
	if r.Ensemble != 0 {
		base.Ensemble = r.Ensemble
	}
	if r.WriteQuorum != 0 {
		base.WriteQuorum = r.WriteQuorum
	}
	if r.AckQuorum != 0 {
		base.AckQuorum = r.AckQuorum
	}
	return base
}

// SetsQuorum reports whether r sets any replication field.
func (r *Rule) SetsQuorum() bool { return r.Ensemble != 0 || r.WriteQuorum != 0 || r.AckQuorum != 0 }

// checkQuorum reports why q is not E >= Qw >= Qa >= 1, and the key (of
// ensemble, write_quorum, ack_quorum) to blame, "" when it is fine.
func checkQuorum(q Quorum) (field, msg string) {
	switch {
	case q.AckQuorum < 1:
		field = "ack_quorum"
	case q.WriteQuorum < q.AckQuorum:
		field = "write_quorum"
	case q.Ensemble < q.WriteQuorum:
		field = "ensemble"
	default:
		return "", ""
	}
	return field, fmt.Sprintf("need ensemble >= write_quorum >= ack_quorum >= 1, have %d/%d/%d", q.Ensemble, q.WriteQuorum, q.AckQuorum)
}

// MemoryStorage configures engines/memory.
type MemoryStorage struct {
	// ShardBudgetBytes bounds the bytes one shard keeps; the oldest records
	// are dropped beyond it.
	ShardBudgetBytes int64 `toml:"shard_budget_bytes"`
}

// FileStorage configures engines/file.
type FileStorage struct {
	// Sync is the fsync policy: batch (fsync before acknowledging each append
	// batch, group-committed), interval (fsync every SyncInterval; a crash
	// loses up to that much acknowledged data) or none (leave it to the OS).
	Sync string `toml:"sync"`
	// SyncInterval is the fsync period of the interval policy.
	SyncInterval Duration `toml:"sync_interval"`
	// SegmentBytes rolls the active segment at this size.
	SegmentBytes int64 `toml:"segment_bytes"`
	// SegmentAge rolls the active segment at this age; 0 = never by age.
	SegmentAge Duration `toml:"segment_age"`
	// RetentionBytes deletes the oldest sealed segments of a shard beyond
	// this size; 0 = no size limit.
	RetentionBytes int64 `toml:"retention_bytes"`
	// RetentionAge deletes sealed segments whose newest record is older;
	// 0 = keep forever.
	RetentionAge Duration `toml:"retention_age"`
	// Offload copies sealed segments to an object store ("s3": the bucket
	// of [storage.s3]); "" or "none" keeps them local. Rules may override.
	Offload string `toml:"offload"`
	// OffloadDeleteLag is how long a segment's local copy is kept after
	// its offload; "0s" deletes it at once.
	OffloadDeleteLag Duration `toml:"offload_delete_lag"`
}

// MinSegmentBytes is the smallest storage.file.segment_bytes.
const MinSegmentBytes = 1024

// Engines are the storage engines this build of Quire has.
var Engines = []string{"file", "hdfs", "journal", "memory", "s3"}

// Sync policies of the file engine.
var SyncPolicies = []string{"batch", "interval", "none"}

// Default returns the configuration `quire start` runs with when there is no
// config file: one node that is its own cluster, data under ./data, every
// listener on its usual port.
func Default() *Config {
	return &Config{
		NodeID:      1,
		ClusterName: "quire",
		DataDir:     "./data",
		MetaAddrs:   []string{"1@127.0.0.1:1228"},
		MemoryLimit: "80%",
		Meta: Meta{
			HeartbeatTimeout:   Duration(time.Second),
			ElectionTimeout:    Duration(time.Second),
			LeaderLeaseTimeout: Duration(500 * time.Millisecond),
			NodeLeaseTTL:       Duration(10 * time.Second),
			LeaderWaitTimeout:  Duration(2 * time.Minute),
		},
		Log:   Log{Level: "info", Format: "text"},
		GRPC:  GRPC{Addr: "0.0.0.0:1228"},
		Admin: Admin{Addr: ":58080"},
		MQTT: MQTT{TCP: ":1883", TLS: ":8883", WS: ":8083", WSS: ":8084", QUIC: ":14567",
			AllowAnonymous: true, AuthHookTimeout: Duration(5 * time.Second), ACLDefault: "allow",
			MaxInflight: 64, MaxQueued: 1000, MaxPacketSize: 16 << 20},
		Kafka: Kafka{Addr: ":9092"},
		AMQP:  AMQP{Addr: ":5672"},
		Bookie: Bookie{
			Enabled:       true,
			MaxGroupWait:  Duration(2 * time.Millisecond),
			MaxGroupBytes: 512 << 10,
			MaxEntrySize:  8 << 20,
			GCInterval:    Duration(10 * time.Minute),
		},
		Storage: Storage{
			DefaultEngine: "file",
			Memory:        MemoryStorage{ShardBudgetBytes: 64 << 20},
			File: FileStorage{
				Sync:           "batch",
				SyncInterval:   Duration(100 * time.Millisecond),
				SegmentBytes:   128 << 20,
				SegmentAge:     Duration(168 * time.Hour),
				RetentionBytes: 0,
				RetentionAge:   Duration(168 * time.Hour),

				OffloadDeleteLag: Duration(time.Hour),
			},
			Journal: JournalStorage{LedgerBytes: 256 << 20, RetentionAge: Duration(168 * time.Hour), OffloadDeleteLag: Duration(time.Hour),
				RereplicateAfter: Duration(2 * time.Minute)},
			S3:   S3Storage{FlushInterval: Duration(50 * time.Millisecond), FlushBytes: 8 << 20},
			HDFS: HDFSStorage{Path: "/quire"},
		},
	}
}

// Voter is one parsed entry of meta_addrs.
type Voter struct {
	ID   uint64
	Addr string // HOST:PORT of the voter's inner gRPC server
}

// Voters parses MetaAddrs. Call it on a validated Config.
func (c *Config) Voters() ([]Voter, error) {
	vs := make([]Voter, 0, len(c.MetaAddrs))
	for _, a := range c.MetaAddrs {
		v, err := parseVoter(a)
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	return vs, nil
}

func parseVoter(s string) (Voter, error) {
	id, addr, ok := strings.Cut(s, "@")
	if !ok {
		return Voter{}, fmt.Errorf("%q is not ID@HOST:PORT", s)
	}
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil || n == 0 {
		return Voter{}, fmt.Errorf("%q: node id %q must be an integer >= 1", s, id)
	}
	if err := checkAddr(addr, true); err != nil {
		return Voter{}, fmt.Errorf("%q: %v", s, err)
	}
	return Voter{ID: n, Addr: addr}, nil
}

// Listener is one configured protocol listener.
type Listener struct {
	Key  string // the config key, e.g. "mqtt.tcp"
	Addr string // "" when off
}

// Listeners returns the protocol front-end listeners in a fixed order.
func (c *Config) Listeners() []Listener {
	return []Listener{
		{"mqtt.tcp", c.MQTT.TCP}, {"mqtt.tls", c.MQTT.TLS}, {"mqtt.ws", c.MQTT.WS},
		{"mqtt.wss", c.MQTT.WSS}, {"mqtt.quic", c.MQTT.QUIC},
		{"kafka.addr", c.Kafka.Addr}, {"amqp.addr", c.AMQP.Addr},
	}
}

// ErrInvalid marks every configuration error: errors.Is(err, ErrInvalid).
var ErrInvalid = errors.New("config: invalid")

// Error is one invalid setting. File, Line and Column locate it when it came
// from a file; Source names where it came from otherwise (a flag).
type Error struct {
	File   string
	Line   int // 1-based; 0 when the key is not in the file (a default)
	Column int
	Source string // e.g. "flag --node-id"; "" for the file or a default
	Key    string // dotted key, with [i] for array elements: storage.rules[0].engine
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.Source != "":
		b.WriteString(e.Source)
		b.WriteString(": ")
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d:%d: ", e.File, e.Line, e.Column)
	case e.File != "":
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key)
		if e.File != "" && e.Line == 0 && e.Source == "" {
			b.WriteString(" (default value)")
		}
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }

// Validate checks c and returns every problem (joined; each is an *Error).
func (c *Config) Validate() error {
	return joinErrors(c.validate())
}

func joinErrors(es []*Error) error {
	if len(es) == 0 {
		return nil
	}
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errors.Join(errs...)
}

func (c *Config) validate() []*Error {
	var es []*Error
	bad := func(key, format string, args ...any) {
		es = append(es, &Error{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	if c.NodeID == 0 {
		bad("node_id", "must be >= 1")
	}
	if c.ClusterName == "" {
		bad("cluster_name", "must not be empty")
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	}
	if _, _, err := ParseMemoryLimit(c.MemoryLimit); err != nil {
		bad("memory_limit", "%v", err)
	}

	// Meta voters.
	if len(c.MetaAddrs) == 0 {
		bad("meta_addrs", "must list at least one voter as \"ID@HOST:PORT\"")
	}
	seen := map[uint64]bool{}
	var voters []Voter
	for i, a := range c.MetaAddrs {
		v, err := parseVoter(a)
		if err != nil {
			bad(fmt.Sprintf("meta_addrs[%d]", i), "%v", err)
			continue
		}
		if seen[v.ID] {
			bad(fmt.Sprintf("meta_addrs[%d]", i), "node id %d is listed twice", v.ID)
		}
		seen[v.ID] = true
		voters = append(voters, v)
	}
	if len(voters) == len(c.MetaAddrs) && len(voters) > 0 && c.NodeID != 0 && !seen[c.NodeID] {
		var ids []string
		for _, v := range voters {
			ids = append(ids, strconv.FormatUint(v.ID, 10))
		}
		bad("meta_addrs", "this node (node_id = %d) is not one of the meta voters (node ids %s): every node of a cluster lists the same voters, its own among them, as \"ID@HOST:PORT\" with HOST:PORT its [grpc] addr as the others reach it, e.g. [\"%d@127.0.0.1:1228\"] for a single node",
			c.NodeID, strings.Join(ids, ", "), c.NodeID)
	}
	if (c.MQTT.TLSCertFile == "") != (c.MQTT.TLSKeyFile == "") {
		key := "mqtt.tls_key_file"
		if c.MQTT.TLSCertFile == "" {
			key = "mqtt.tls_cert_file"
		}
		bad(key, "tls_cert_file and tls_key_file go together: set both or neither")
	}
	if c.MQTT.TLSClientCAFile != "" && !c.MQTT.TLSConfigured() {
		bad("mqtt.tls_client_ca_file", "needs tls_cert_file and tls_key_file")
	}
	m := c.Meta
	if m.HeartbeatTimeout < Duration(10*time.Millisecond) {
		bad("meta.heartbeat_timeout", "must be >= 10ms, got %s", m.HeartbeatTimeout)
	}
	if m.ElectionTimeout < Duration(10*time.Millisecond) {
		bad("meta.election_timeout", "must be >= 10ms, got %s", m.ElectionTimeout)
	}
	if m.LeaderLeaseTimeout < Duration(5*time.Millisecond) || m.LeaderLeaseTimeout > m.HeartbeatTimeout {
		bad("meta.leader_lease_timeout", "must be from 5ms to meta.heartbeat_timeout (%s), got %s", m.HeartbeatTimeout, m.LeaderLeaseTimeout)
	}
	if m.NodeLeaseTTL < Duration(time.Second) {
		bad("meta.node_lease_ttl", "must be >= 1s, got %s", m.NodeLeaseTTL)
	}
	if m.LeaderWaitTimeout <= 0 {
		bad("meta.leader_wait_timeout", "must be > 0, got %s", m.LeaderWaitTimeout)
	}

	// Log.
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		bad("log.format", "%q is not one of text, json", c.Log.Format)
	}

	// Listeners.
	if c.GRPC.Addr == "" {
		bad("grpc.addr", "must not be empty: the node always runs its inner gRPC server")
	} else if err := checkAddr(c.GRPC.Addr, false); err != nil {
		bad("grpc.addr", "%v", err)
	}
	if c.Admin.Addr == "" {
		bad("admin.addr", "must not be empty: the node always runs its admin HTTP server")
	} else if err := checkAddr(c.Admin.Addr, false); err != nil {
		bad("admin.addr", "%v", err)
	}
	for _, l := range c.Listeners() {
		if l.Addr == "" {
			continue
		}
		if err := checkAddr(l.Addr, false); err != nil {
			bad(l.Key, "%v", err)
		}
	}

	// Bookie.
	if c.Bookie.MaxGroupWait <= 0 {
		bad("bookie.max_group_wait", "must be > 0, got %s", c.Bookie.MaxGroupWait)
	}
	if c.Bookie.MaxGroupBytes < 4096 {
		bad("bookie.max_group_bytes", "must be >= 4096, got %d", c.Bookie.MaxGroupBytes)
	}
	if c.Bookie.GCInterval < 0 {
		bad("bookie.gc_interval", "must be >= 0 (0 = never), got %s", c.Bookie.GCInterval)
	}
	if c.Bookie.MaxEntrySize <= 0 || c.Bookie.MaxEntrySize > MaxBookieEntrySize {
		bad("bookie.max_entry_size", "must be from 1 to %d, got %d", MaxBookieEntrySize, c.Bookie.MaxEntrySize)
	}

	// MQTT authentication and ACLs.
	for i, u := range c.MQTT.Users {
		if u.Name == "" {
			bad(fmt.Sprintf("mqtt.users[%d].name", i), "must not be empty")
		}
		if u.PasswordHash == "" && u.SCRAMSHA256 == "" {
			bad(fmt.Sprintf("mqtt.users[%d].password_hash", i), "a user needs password_hash, scram_sha256 or both (`quirectl passwd` prints them)")
		}
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); u.PasswordHash != "" && err != nil {
			bad(fmt.Sprintf("mqtt.users[%d].password_hash", i), "not a bcrypt hash ($2a$/$2b$/$2y$…; `quirectl passwd` makes one): %v", err)
		}
		if _, err := auth.ParseSCRAMCredentials(u.SCRAMSHA256); u.SCRAMSHA256 != "" && err != nil {
			bad(fmt.Sprintf("mqtt.users[%d].scram_sha256", i), "%v", err)
		}
	}
	if c.MQTT.AuthHookURL != "" {
		if u, err := url.Parse(c.MQTT.AuthHookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("mqtt.auth_hook_url", "must be an http:// or https:// URL, got %q", c.MQTT.AuthHookURL)
		}
	}
	if c.MQTT.MaxInflight < 1 || c.MQTT.MaxInflight > 65535 {
		bad("mqtt.max_inflight", "must be from 1 to 65535, got %d", c.MQTT.MaxInflight)
	}
	if c.MQTT.MaxQueued < 1 {
		bad("mqtt.max_queued", "must be >= 1, got %d", c.MQTT.MaxQueued)
	}
	if c.MQTT.MaxPacketSize < 64 || c.MQTT.MaxPacketSize > 268435460 {
		bad("mqtt.max_packet_size", "must be from 64 to 268435460 (MQTT's largest packet), got %d", c.MQTT.MaxPacketSize)
	}
	if c.MQTT.MaxKeepAlive < 0 || c.MQTT.MaxKeepAlive > 65535 {
		bad("mqtt.max_keep_alive", "must be 0 (no cap) to 65535 seconds, got %d", c.MQTT.MaxKeepAlive)
	}
	if c.MQTT.MaxPublishRate < 0 {
		bad("mqtt.max_publish_rate", "must be >= 0 (0 = no limit), got %v", c.MQTT.MaxPublishRate)
	}
	if c.MQTT.AuthHookTimeout <= 0 {
		bad("mqtt.auth_hook_timeout", "must be > 0")
	}
	if c.MQTT.ACLDefault != "allow" && c.MQTT.ACLDefault != "deny" {
		bad("mqtt.acl_default", "must be \"allow\" or \"deny\", got %q", c.MQTT.ACLDefault)
	}
	for i, r := range c.MQTT.ACL {
		if r.Permission != "allow" && r.Permission != "deny" {
			bad(fmt.Sprintf("mqtt.acl[%d].permission", i), "must be \"allow\" or \"deny\", got %q", r.Permission)
		}
		if r.Action != "publish" && r.Action != "subscribe" && r.Action != "all" {
			bad(fmt.Sprintf("mqtt.acl[%d].action", i), "must be \"publish\", \"subscribe\" or \"all\", got %q", r.Action)
		}
		if len(r.Topics) == 0 {
			bad(fmt.Sprintf("mqtt.acl[%d].topics", i), "must list at least one topic filter")
		}
		for _, f := range r.Topics {
			if err := shard.ValidateFilter(strings.NewReplacer("%u", "u", "%c", "c").Replace(f)); err != nil {
				bad(fmt.Sprintf("mqtt.acl[%d].topics", i), "%q: %v", f, err)
			}
		}
	}

	// Storage.
	engines := strings.Join(Engines, ", ")
	if !slices.Contains(Engines, c.Storage.DefaultEngine) {
		bad("storage.default_engine", "unknown engine %q (this build has %s)", c.Storage.DefaultEngine, engines)
	}
	for i, r := range c.Storage.Rules {
		if err := shard.ValidateFilter(r.Match); err != nil {
			bad(fmt.Sprintf("storage.rules[%d].match", i), "%v", err)
		}
		if !slices.Contains(Engines, r.Engine) {
			bad(fmt.Sprintf("storage.rules[%d].engine", i), "unknown engine %q (this build has %s)", r.Engine, engines)
		}
		if r.Offload != "" && r.Offload != "none" && !slices.Contains(OffloadTargets, r.Offload) {
			bad(fmt.Sprintf("storage.rules[%d].offload", i), "%q is not \"none\" or one of %s", r.Offload, strings.Join(OffloadTargets, ", "))
		}
		if r.Offload != "" && r.Engine != "file" && r.Engine != "journal" {
			bad(fmt.Sprintf("storage.rules[%d].offload", i), "offload applies to engines \"file\" and \"journal\" only, not %q", r.Engine)
		}
		if r.OffloadDeleteLag < 0 {
			bad(fmt.Sprintf("storage.rules[%d].offload_delete_lag", i), "must be >= 0 (0 = [storage.%s]'s), got %s", r.Engine, r.OffloadDeleteLag)
		}
		if !r.SetsQuorum() {
			continue
		}
		if r.Engine != "journal" {
			bad(fmt.Sprintf("storage.rules[%d].engine", i), "ensemble, write_quorum and ack_quorum apply to engine \"journal\" only, not %q", r.Engine)
		} else if field, msg := checkQuorum(r.Quorum(c.JournalQuorum())); field != "" {
			bad(fmt.Sprintf("storage.rules[%d].%s", i, ruleQuorumKey(&r, field)), "%s (with [storage.journal]'s for the fields the rule leaves 0)", msg)
		}
	}
	j := c.Storage.Journal
	for _, f := range []struct {
		key string
		v   int
	}{{"ensemble", j.Ensemble}, {"write_quorum", j.WriteQuorum}, {"ack_quorum", j.AckQuorum}} {
		if f.v < 0 {
			bad("storage.journal."+f.key, "must be >= 0 (0 = automatic), got %d", f.v)
		}
	}
	if field, msg := checkQuorum(c.JournalQuorum()); field != "" && j.Ensemble >= 0 && j.WriteQuorum >= 0 && j.AckQuorum >= 0 {
		bad("storage.journal."+field, "%s (0 = automatic: 3/2/2, or 1/1/1 with one meta voter)", msg)
	}
	if j.LedgerBytes < 0 {
		bad("storage.journal.ledger_bytes", "must be >= 0 (0 = no limit), got %d", j.LedgerBytes)
	}
	if j.LedgerEntries < 0 {
		bad("storage.journal.ledger_entries", "must be >= 0 (0 = no limit), got %d", j.LedgerEntries)
	}
	if j.LedgerAge < 0 {
		bad("storage.journal.ledger_age", "must be >= 0 (0 = never by age), got %s", j.LedgerAge)
	}
	if j.RetentionAge < 0 {
		bad("storage.journal.retention_age", "must be >= 0 (0 = keep forever), got %s", j.RetentionAge)
	}
	if j.RereplicateAfter < 0 {
		bad("storage.journal.rereplicate_after", "must be >= 0 (0 = never), got %s", j.RereplicateAfter)
	}
	checkOffload(bad, "storage.journal", j.Offload, j.OffloadDeleteLag, "drop at once")
	if c.Storage.Memory.ShardBudgetBytes <= 0 {
		bad("storage.memory.shard_budget_bytes", "must be > 0, got %d", c.Storage.Memory.ShardBudgetBytes)
	}
	f := c.Storage.File
	if !slices.Contains(SyncPolicies, f.Sync) {
		bad("storage.file.sync", "%q is not one of %s", f.Sync, strings.Join(SyncPolicies, ", "))
	}
	if f.SyncInterval <= 0 {
		bad("storage.file.sync_interval", "must be > 0, got %s", f.SyncInterval)
	}
	if f.SegmentBytes < MinSegmentBytes {
		bad("storage.file.segment_bytes", "must be >= %d, got %d", MinSegmentBytes, f.SegmentBytes)
	}
	if f.SegmentAge < 0 {
		bad("storage.file.segment_age", "must be >= 0 (0 = never roll by age), got %s", f.SegmentAge)
	}
	if f.RetentionBytes < 0 {
		bad("storage.file.retention_bytes", "must be >= 0 (0 = no size limit), got %d", f.RetentionBytes)
	}
	if f.RetentionAge < 0 {
		bad("storage.file.retention_age", "must be >= 0 (0 = keep forever), got %s", f.RetentionAge)
	}
	checkOffload(bad, "storage.file", f.Offload, f.OffloadDeleteLag, "delete at once")
	if c.UsesEngine("s3") {
		if c.Storage.S3.Endpoint == "" {
			bad("storage.s3.endpoint", "is required: topics are routed to engine \"s3\"")
		}
		if c.Storage.S3.Bucket == "" {
			bad("storage.s3.bucket", "is required: topics are routed to engine \"s3\"")
		}
	}
	if c.Storage.S3.FlushInterval < 0 {
		bad("storage.s3.flush_interval", "must be >= 0, got %s", c.Storage.S3.FlushInterval)
	}
	if c.Storage.S3.FlushBytes < 0 {
		bad("storage.s3.flush_bytes", "must be >= 0 (0 = 8 MiB), got %d", c.Storage.S3.FlushBytes)
	}
	if c.UsesEngine("hdfs") && c.Storage.HDFS.Namenode == "" {
		bad("storage.hdfs.namenode", "is required: topics are routed to engine \"hdfs\"")
	}
	if c.UsesOffload("s3") {
		if c.Storage.S3.Endpoint == "" {
			bad("storage.s3.endpoint", "is required: offload = \"s3\" is configured")
		}
		if c.Storage.S3.Bucket == "" {
			bad("storage.s3.bucket", "is required: offload = \"s3\" is configured")
		}
	}
	return es
}

// ruleQuorumKey is the key of a rule to blame for a bad quorum: field if
// the rule sets it, else one the rule does set.
func ruleQuorumKey(r *Rule, field string) string {
	set := map[string]bool{"ensemble": r.Ensemble != 0, "write_quorum": r.WriteQuorum != 0, "ack_quorum": r.AckQuorum != 0}
	if set[field] {
		return field
	}
	for _, k := range []string{"ensemble", "write_quorum", "ack_quorum"} {
		if set[k] {
			return k
		}
	}
	return field
}

// checkAddr checks a HOST:PORT listen (or, with needHost, dial) address.
func checkAddr(addr string, needHost bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q is not HOST:PORT (e.g. \":1883\" or \"127.0.0.1:1883\")", addr)
	}
	if needHost && host == "" {
		return fmt.Errorf("address %q needs a host", addr)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("address %q: bad host %q", addr, host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return fmt.Errorf("address %q: port %q is not a number from 0 to 65535", addr, port)
	}
	if needHost && p == 0 {
		return fmt.Errorf("address %q: port 0 cannot be dialled", addr)
	}
	return nil
}

// Duration is a time.Duration written in TOML as a string such as "100ms",
// "30s" or "168h".
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes d as "1h0m0s"-style text.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q: want a string such as \"100ms\", \"30s\" or \"168h\"", b)
	}
	*d = Duration(v)
	return nil
}

// checkOffload checks the offload and offload_delete_lag of section.
func checkOffload(bad func(key, format string, args ...any), section, target string, lag Duration, zero string) {
	if target != "" && target != "none" && !slices.Contains(OffloadTargets, target) {
		bad(section+".offload", "%q is not \"\", \"none\" or one of %s", target, strings.Join(OffloadTargets, ", "))
	}
	if lag < 0 {
		bad(section+".offload_delete_lag", "must be >= 0 (0 = %s), got %s", zero, lag)
	}
}

// MinMemoryLimit is the smallest memory_limit given as a size.
const MinMemoryLimit = 64 << 20

// ParseMemoryLimit parses memory_limit: "" or "0" (no limit: both
// results 0), a percentage in (0, 100] of the memory available to the
// process ("80%"; percent set), or a size of at least MinMemoryLimit bytes
// (bytes set): an integer with an optional unit B, KB, MB, GB, TB (powers
// of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. "2GiB" or
// "1500MB".
func ParseMemoryLimit(s string) (bytes int64, percent float64, err error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, 0, nil
	}
	if num, ok := strings.CutSuffix(s, "%"); ok {
		p, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || !(p > 0 && p <= 100) {
			return 0, 0, fmt.Errorf("%q: a percentage must be in (0, 100]", s)
		}
		return 0, p, nil
	}
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	mult, ok := sizeUnits[strings.ToLower(unit)]
	n, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil || num == "" {
		return 0, 0, fmt.Errorf("%q is not \"0\", a percentage such as \"80%%\" or a size such as \"2GiB\" (units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", s)
	}
	if n > (1<<63-1)/mult {
		return 0, 0, fmt.Errorf("%q is too large", s)
	}
	if n*mult < MinMemoryLimit {
		return 0, 0, fmt.Errorf("%q is below the smallest limit, 64MiB", s)
	}
	return n * mult, 0, nil
}

var sizeUnits = map[string]int64{"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
