package meta

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/quiremq/quire/internal/vfs"
)

// Voter is one member of the Raft voter set: a node id and the node's inner
// gRPC address (which carries both the Meta service and Raft traffic).
type Voter struct {
	ID   uint64
	Addr string
}

func (v Voter) String() string { return fmt.Sprintf("%d@%s", v.ID, v.Addr) }

// ParseVoters parses meta_addrs entries, each "ID@HOST:PORT".
func ParseVoters(addrs []string) ([]Voter, error) {
	vs := make([]Voter, 0, len(addrs))
	seen := map[uint64]bool{}
	for _, a := range addrs {
		id, addr, ok := strings.Cut(a, "@")
		if !ok || addr == "" {
			return nil, fmt.Errorf("%w: meta address %q is not ID@HOST:PORT", ErrInvalid, a)
		}
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%w: meta address %q: node id must be an integer >= 1", ErrInvalid, a)
		}
		if seen[n] {
			return nil, fmt.Errorf("%w: meta address %q: node id %d listed twice", ErrInvalid, a, n)
		}
		seen[n] = true
		vs = append(vs, Voter{ID: n, Addr: addr})
	}
	return vs, nil
}

// Options configure a Server. Zero values mean the defaults listed.
type Options struct {
	// ID is this node's id; it must be one of Voters.
	ID uint64
	// Voters is the full voter set (meta_addrs). A node with no Raft state
	// bootstraps with exactly this configuration; every voter must be given
	// the same list. With one voter the node is a cluster by itself.
	Voters []Voter
	// Dir is the directory of the Raft log and stable store (Pebble, under
	// Dir/raft) and of the snapshots (Dir/snapshots).
	Dir string
	// FS holds the Pebble store. Default vfs.Default.
	FS vfs.FS
	// Snapshots stores FSM snapshots. Default: raft.NewFileSnapshotStore on
	// Dir/snapshots, which needs FS to be the real disk; tests on an
	// in-memory FS pass a raft.InmemSnapshotStore (kept across restarts).
	Snapshots raft.SnapshotStore
	// Transport carries Raft traffic. Default: hashicorp's NetworkTransport
	// over gRPC streams on the inner gRPC server (see Register). Tests pass a
	// FaultNetwork transport.
	Transport raft.Transport
	// DialOptions are used for every connection to another node (Raft
	// streams and forwarded requests). Default: insecure credentials.
	DialOptions []grpc.DialOption

	// Raft timing; see hashicorp/raft's Config. Defaults: heartbeat and
	// election timeout 1s, leader lease 500ms, commit timeout 5ms.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// MaxAppendEntries bounds the entries per AppendEntries RPC and per
	// FSM batch (also the depth of the batched apply channel). Default 128:
	// an entry already carries up to WriteBatchOps writes, and Raft
	// allocates buffers of this many entries per AppendEntries and per
	// commit.
	MaxAppendEntries int
	// SnapshotInterval and SnapshotThreshold: every SnapshotInterval the
	// FSM is snapshotted if at least SnapshotThreshold entries were applied
	// since the last snapshot; the log is then truncated to TrailingLogs.
	// Defaults 30s, 8192, 10240.
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// SnapshotRetain is how many snapshots are kept. Default 2.
	SnapshotRetain int

	// WriteBatchOps and WriteBatchBytes bound the writes the leader commits
	// together in one Raft entry (about: a write larger than WriteBatchBytes
	// goes alone). WriteBatchInflight is how many such entries may be in
	// flight at once; writes arriving meanwhile wait and form the next one.
	// Defaults 1024 ops, 1 MiB, 4 entries.
	WriteBatchOps, WriteBatchBytes, WriteBatchInflight int

	// WatchHistory is how many changes are kept in memory for watchers that
	// start in the past or fall behind. Default 16384.
	WatchHistory int
	// ApplyTimeout bounds waiting for a write to commit when the caller's
	// context has no deadline. Default 10s.
	ApplyTimeout time.Duration
	// LeaseCheckInterval is how often the leader looks for expired leases.
	// Default 100ms.
	LeaseCheckInterval time.Duration
	// MinLeaseTTL and MaxLeaseTTL bound the TTL of a lease. A new leader
	// gives every lease a full TTL, so the TTL should exceed a few election
	// timeouts. Defaults 1s and 1h.
	MinLeaseTTL, MaxLeaseTTL time.Duration
	// MaxKeySize and MaxValueSize bound keys and values. Defaults 4 KiB and
	// 1 MiB.
	MaxKeySize, MaxValueSize int
	// ListLimit is the page size of a List that asks for none, and the
	// largest page. Default 1000.
	ListLimit int

	// Logger receives the server's and Raft's logs. Default slog.Default().
	Logger *slog.Logger
	// RaftLogLevel filters hashicorp/raft's own log: "debug", "info",
	// "warn" (default) or "error".
	RaftLogLevel string
	// Registerer registers the server's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Now is the clock of lease deadlines. Default time.Now.
	Now func() time.Time
}

// EnsureDefaults fills in zero fields with their defaults.
func (o *Options) EnsureDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.FS == nil {
		o.FS = vfs.Default
	}
	def(&o.HeartbeatTimeout, time.Second)
	def(&o.ElectionTimeout, time.Second)
	def(&o.LeaderLeaseTimeout, 500*time.Millisecond)
	def(&o.CommitTimeout, 5*time.Millisecond)
	if o.MaxAppendEntries == 0 {
		o.MaxAppendEntries = 128
	}
	def(&o.SnapshotInterval, 30*time.Second)
	if o.SnapshotThreshold == 0 {
		o.SnapshotThreshold = 8192
	}
	if o.TrailingLogs == 0 {
		o.TrailingLogs = 10240
	}
	if o.SnapshotRetain == 0 {
		o.SnapshotRetain = 2
	}
	if o.WatchHistory == 0 {
		o.WatchHistory = 16384
	}
	if o.WriteBatchOps == 0 {
		o.WriteBatchOps = 1024
	}
	if o.WriteBatchBytes == 0 {
		o.WriteBatchBytes = 1 << 20
	}
	if o.WriteBatchInflight == 0 {
		o.WriteBatchInflight = 4
	}
	def(&o.ApplyTimeout, 10*time.Second)
	def(&o.LeaseCheckInterval, 100*time.Millisecond)
	def(&o.MinLeaseTTL, time.Second)
	def(&o.MaxLeaseTTL, time.Hour)
	if o.MaxKeySize == 0 {
		o.MaxKeySize = 4 << 10
	}
	if o.MaxValueSize == 0 {
		o.MaxValueSize = 1 << 20
	}
	if o.ListLimit == 0 {
		o.ListLimit = 1000
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.RaftLogLevel == "" {
		o.RaftLogLevel = "warn"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Validate reports the first problem with o (after EnsureDefaults).
func (o *Options) Validate() error {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("%w: meta options: "+f, append([]any{ErrInvalid}, a...)...)
	}
	if o.ID == 0 {
		return bad("ID must be >= 1")
	}
	if len(o.Voters) == 0 {
		return bad("Voters must list at least this node")
	}
	self := false
	seen := map[uint64]bool{}
	for _, v := range o.Voters {
		if v.ID == 0 || v.Addr == "" {
			return bad("voter %v needs an id >= 1 and an address", v)
		}
		if seen[v.ID] {
			return bad("voter id %d listed twice", v.ID)
		}
		seen[v.ID] = true
		self = self || v.ID == o.ID
	}
	if !self {
		return bad("this node (%d) is not one of the voters %v", o.ID, o.Voters)
	}
	if o.Dir == "" {
		return bad("Dir is required")
	}
	if o.LeaderLeaseTimeout > o.HeartbeatTimeout {
		return bad("LeaderLeaseTimeout (%v) must not exceed HeartbeatTimeout (%v)", o.LeaderLeaseTimeout, o.HeartbeatTimeout)
	}
	if o.MinLeaseTTL > o.MaxLeaseTTL {
		return bad("MinLeaseTTL exceeds MaxLeaseTTL")
	}
	if o.WatchHistory < 1 || o.MaxAppendEntries < 1 || o.ListLimit < 1 {
		return bad("WatchHistory, MaxAppendEntries and ListLimit must be positive")
	}
	if o.WriteBatchOps < 1 || o.WriteBatchBytes < 1 || o.WriteBatchInflight < 1 {
		return bad("WriteBatchOps, WriteBatchBytes and WriteBatchInflight must be positive")
	}
	switch o.RaftLogLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("RaftLogLevel %q is not debug, info, warn or error", o.RaftLogLevel)
	}
	return nil
}

func (o *Options) self() Voter {
	for _, v := range o.Voters {
		if v.ID == o.ID {
			return v
		}
	}
	return Voter{}
}
