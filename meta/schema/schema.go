// Package schema is the typed layer above meta's key-value store: the
// records Quire keeps in meta, where each lives, and CAS helpers.
//
// Key layout (all values are JSON objects of the types below; ids are
// zero-padded to 20 digits so that keys sort numerically):
//
//	/cluster/config                    ClusterConfig
//	/nodes/<id>                        Node       registration (kept after the node stops)
//	/live/<id>                         Node       liveness, attached to the node's lease
//	/topics/<name>                     Topic
//	/shards/<name>                     Shard      (<name> = <topic>/<partition>)
//	/ledgers/<id>                      Ledger     (journal ledger metadata, updated by CAS)
//	/ids/ledger                        Counter    last ledger id handed out
//	/logs/<shard>                      Log        the ordered ledgers of a journal shard
//	/groups/<group>                    Group
//	/offsets/<group>/<topic>/<part>    Offset     committed consumer offset
//	/cookies/bookies/<bookie id>       a bookie's cookie (journal/bookie.Cookie)
//	/mqtt/routes/<id>                  the MQTT subscription filters of node <id>'s sessions
//	                                   (internal/node.PrefixMQTTRoutes; cross-node routing)
//
// A node is up while its /live key exists: Register writes it under a
// lease and keeps the lease alive; when the node stops heartbeating the
// leader expires the lease, the key is deleted, and watchers of /live/ see
// the DELETE. Per-message state never goes here (DESIGN.md, "Data model").
package schema

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/quiremq/quire/meta"
)

// Key prefixes and fixed keys. Part of the stored format.
const (
	KeyClusterConfig = "/cluster/config"
	PrefixNodes      = "/nodes/"
	PrefixLive       = "/live/"
	PrefixTopics     = "/topics/"
	PrefixShards     = "/shards/"
	PrefixLedgers    = "/ledgers/"
	KeyLedgerIDs     = "/ids/ledger"
	PrefixLogs       = "/logs/"
	PrefixGroups     = "/groups/"
	PrefixOffsets    = "/offsets/"
	PrefixCookies    = "/cookies/bookies/"
	// PrefixRereplicas holds a key per copy in progress of a ledger's
	// entries to a bookie not yet in its metadata (journal/client
	// re-replication), under a lease: a bookie's garbage collection keeps
	// such a ledger's entries.
	PrefixRereplicas = "/rereplicas/"
	// KeyAuditor is held, under its lease, by the one journal auditor
	// running re-replication (the node's id as its value).
	KeyAuditor = "/auditor/journal"
)

// Errors.
var (
	// ErrExists is returned by the Create helpers when the record exists.
	ErrExists = errors.New("schema: already exists")
	// ErrInvalid is returned for a record that breaks its invariants.
	ErrInvalid = errors.New("schema: invalid record")
)

func idKey(prefix string, id uint64) string { return fmt.Sprintf("%s%020d", prefix, id) }

// NodeKey, LiveKey, TopicKey, ... return the key of one record.
func NodeKey(id uint64) string   { return idKey(PrefixNodes, id) }
func LiveKey(id uint64) string   { return idKey(PrefixLive, id) }
func LedgerKey(id uint64) string { return idKey(PrefixLedgers, id) }
func TopicKey(name string) string {
	return PrefixTopics + name
}
func ShardKey(name string) string { return PrefixShards + name }

// RereplicaKey is the key of a copy of ledger's entries to bookie in
// progress (PrefixRereplicas).
func RereplicaKey(ledger uint64, bookie string) string {
	return idKey(PrefixRereplicas, ledger) + "/" + bookie
}
func LogKey(shard string) string  { return PrefixLogs + shard }
func GroupKey(name string) string { return PrefixGroups + name }

// CookieKey is where a bookie's cookie is kept (the node's bookie.CookieStore).
func CookieKey(bookieID string) string { return PrefixCookies + bookieID }
func OffsetKey(group, topic string, partition int) string {
	return fmt.Sprintf("%s%s/%s/%d", PrefixOffsets, group, topic, partition)
}

// ---- records ----

// ClusterConfig is the cluster-wide configuration.
type ClusterConfig struct {
	Name          string            `json:"name"`
	DefaultEngine string            `json:"default_engine"`
	Settings      map[string]string `json:"settings,omitempty"`
}

// Node describes one node.
type Node struct {
	ID        uint64    `json:"id"`
	Addr      string    `json:"addr"`                // inner gRPC address (its meta_addrs entry)
	GRPCAddr  string    `json:"grpc_addr,omitempty"` // address the inner gRPC server listens on
	AdminAddr string    `json:"admin_addr,omitempty"`
	Roles     []string  `json:"roles,omitempty"`
	Version   string    `json:"version,omitempty"`
	StartedAt time.Time `json:"started_at"`
}

// NodeState is a registered node and whether it is up.
type NodeState struct {
	Node
	Up bool `json:"up"`
}

// Topic is a topic: its engine and settings and its partition count.
type Topic struct {
	Name       string            `json:"name"`
	Engine     string            `json:"engine"`
	Settings   map[string]string `json:"settings,omitempty"`
	Partitions int               `json:"partitions"`
	CreatedAt  time.Time         `json:"created_at"`
	// Node is the node whose engines hold the topic's shards (0: not
	// recorded). Shards are local to that node until the journal engine
	// places them.
	Node uint64 `json:"node,omitempty"`
}

// Shard is one partition of a topic.
type Shard struct {
	Name      string `json:"name"`
	Topic     string `json:"topic"`
	Partition int    `json:"partition"`
	Engine    string `json:"engine"`
	// Owner is the node serving the shard (0: none).
	Owner uint64 `json:"owner,omitempty"`
}

// LedgerState is the state of a journal ledger.
type LedgerState string

// Ledger states.
const (
	LedgerOpen       LedgerState = "OPEN"
	LedgerRecovering LedgerState = "IN_RECOVERY"
	LedgerClosed     LedgerState = "CLOSED"
)

// Fragment is the ensemble of a ledger from FirstEntry on.
type Fragment struct {
	FirstEntry int64    `json:"first_entry"`
	Bookies    []string `json:"bookies"`
}

// Ledger is a journal ledger's metadata (DESIGN.md, "Journal").
type Ledger struct {
	ID          uint64      `json:"id"`
	Ensemble    int         `json:"ensemble"`     // E
	WriteQuorum int         `json:"write_quorum"` // Qw
	AckQuorum   int         `json:"ack_quorum"`   // Qa
	State       LedgerState `json:"state"`
	// LastEntry is the last entry of a CLOSED ledger (-1: empty).
	LastEntry int64      `json:"last_entry"`
	Fragments []Fragment `json:"fragments"`
	CreatedAt time.Time  `json:"created_at"`
}

// Validate checks E ≥ Qw ≥ Qa ≥ 1, a known state, and fragments in
// ascending order, each with E distinct bookies.
func (l *Ledger) Validate() error {
	if !(l.Ensemble >= l.WriteQuorum && l.WriteQuorum >= l.AckQuorum && l.AckQuorum >= 1) {
		return fmt.Errorf("%w: ledger %d: need E >= Qw >= Qa >= 1, have %d/%d/%d", ErrInvalid, l.ID, l.Ensemble, l.WriteQuorum, l.AckQuorum)
	}
	switch l.State {
	case LedgerOpen, LedgerRecovering, LedgerClosed:
	default:
		return fmt.Errorf("%w: ledger %d: state %q", ErrInvalid, l.ID, l.State)
	}
	if len(l.Fragments) == 0 {
		return fmt.Errorf("%w: ledger %d has no fragment", ErrInvalid, l.ID)
	}
	for i, f := range l.Fragments {
		if i > 0 && f.FirstEntry <= l.Fragments[i-1].FirstEntry {
			return fmt.Errorf("%w: ledger %d: fragments out of order", ErrInvalid, l.ID)
		}
		seen := map[string]bool{}
		for _, b := range f.Bookies {
			seen[b] = true
		}
		if len(f.Bookies) != l.Ensemble || len(seen) != l.Ensemble {
			return fmt.Errorf("%w: ledger %d: fragment %d needs %d distinct bookies", ErrInvalid, l.ID, i, l.Ensemble)
		}
	}
	return nil
}

// Log is the ordered list of ledgers holding a journal shard.
type Log struct {
	Shard   string   `json:"shard"`
	Ledgers []uint64 `json:"ledgers"`
	// Trimmed counts the entries of the ledgers retention removed from
	// the front of the list: the first ledger's entry 0 is at log offset
	// Trimmed, so offsets stay stable as old ledgers go.
	Trimmed int64 `json:"trimmed,omitempty"`
}

// Group is a consumer group.
type Group struct {
	Name      string    `json:"name"`
	Protocol  string    `json:"protocol,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Offset is a committed consumer offset.
type Offset struct {
	Offset   int64     `json:"offset"`
	Metadata string    `json:"metadata,omitempty"`
	At       time.Time `json:"at"`
}

// Counter is a monotonically increasing id allocator.
type Counter struct {
	Last uint64 `json:"last"`
}

// ---- typed access ----

// Record is a decoded value with the version to CAS against.
type Record[T any] struct {
	Value   T
	Version uint64
}

// Get reads and decodes key (meta.ErrNotFound when missing).
func Get[T any](ctx context.Context, kv meta.KV, key string, opts ...meta.ReadOption) (Record[T], error) {
	e, err := kv.Get(ctx, key, opts...)
	if err != nil {
		return Record[T]{}, err
	}
	var r Record[T]
	if err := json.Unmarshal(e.Value, &r.Value); err != nil {
		return Record[T]{}, fmt.Errorf("schema: decoding %s: %w", key, err)
	}
	r.Version = e.Version
	return r, nil
}

// Create writes key only if it does not exist (ErrExists otherwise).
func Create[T any](ctx context.Context, kv meta.KV, key string, v T, opts ...meta.WriteOption) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	e, err := kv.Put(ctx, key, b, append(opts, meta.IfVersion(0))...)
	if errors.Is(err, meta.ErrVersionMismatch) {
		return 0, fmt.Errorf("%w: %s", ErrExists, key)
	}
	return e.Version, err
}

// Put writes key unconditionally.
func Put[T any](ctx context.Context, kv meta.KV, key string, v T, opts ...meta.WriteOption) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	e, err := kv.Put(ctx, key, b, opts...)
	return e.Version, err
}

// CAS writes key if its version is still version.
func CAS[T any](ctx context.Context, kv meta.KV, key string, version uint64, v T) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	e, err := kv.Put(ctx, key, b, meta.IfVersion(version))
	return e.Version, err
}

// Update applies fn to the current value of key and writes the result with
// CAS, re-reading and retrying when another writer got there first. A
// missing key starts from T's zero value when create is true (else
// meta.ErrNotFound). An error from fn aborts the update.
func Update[T any](ctx context.Context, kv meta.KV, key string, create bool, fn func(*T) error) (Record[T], error) {
	for {
		cur, err := Get[T](ctx, kv, key)
		if errors.Is(err, meta.ErrNotFound) && create {
			err = nil
		}
		if err != nil {
			return Record[T]{}, err
		}
		if err := fn(&cur.Value); err != nil {
			return Record[T]{}, err
		}
		v, err := CAS(ctx, kv, key, cur.Version, cur.Value)
		if errors.Is(err, meta.ErrVersionMismatch) {
			continue
		}
		if err != nil {
			return Record[T]{}, err
		}
		return Record[T]{Value: cur.Value, Version: v}, nil
	}
}

// List reads every record under prefix (all pages) and the revision of the
// last page.
func List[T any](ctx context.Context, kv meta.KV, prefix string, stale bool) ([]Record[T], uint64, error) {
	var out []Record[T]
	after := ""
	for {
		res, err := kv.List(ctx, prefix, meta.ListOptions{StartAfter: after, Stale: stale})
		if err != nil {
			return nil, 0, err
		}
		for _, e := range res.KVs {
			var r Record[T]
			if err := json.Unmarshal(e.Value, &r.Value); err != nil {
				return nil, 0, fmt.Errorf("schema: decoding %s: %w", e.Key, err)
			}
			r.Version = e.Version
			out = append(out, r)
		}
		if !res.More {
			return out, res.Revision, nil
		}
		after = res.KVs[len(res.KVs)-1].Key
	}
}

// ---- the store ----

// Store is the typed metadata API over a meta.KV.
type Store struct{ KV meta.KV }

// ClusterConfig returns the cluster configuration (zero when unset).
func (s Store) ClusterConfig(ctx context.Context) (Record[ClusterConfig], error) {
	r, err := Get[ClusterConfig](ctx, s.KV, KeyClusterConfig)
	if errors.Is(err, meta.ErrNotFound) {
		return Record[ClusterConfig]{}, nil
	}
	return r, err
}

// SetClusterConfig writes the configuration if its version is still version
// (0: not set yet).
func (s Store) SetClusterConfig(ctx context.Context, version uint64, c ClusterConfig) (uint64, error) {
	return CAS(ctx, s.KV, KeyClusterConfig, version, c)
}

// CreateTopic records a topic and its shards' records; ErrExists when the
// topic exists.
func (s Store) CreateTopic(ctx context.Context, t Topic) error {
	if t.Name == "" || t.Partitions < 1 || t.Engine == "" {
		return fmt.Errorf("%w: topic %+v", ErrInvalid, t)
	}
	if t.CreatedAt.IsZero() {
		t.CreatedAt = time.Now().UTC()
	}
	// Do not overwrite the shard records of an existing topic (Create
	// below is still the check that counts, against a concurrent create).
	if _, err := s.KV.Get(ctx, TopicKey(t.Name)); err == nil {
		return fmt.Errorf("%w: %s", ErrExists, TopicKey(t.Name))
	} else if !errors.Is(err, meta.ErrNotFound) {
		return err
	}
	for p := range t.Partitions {
		name := fmt.Sprintf("%s/%d", t.Name, p)
		if _, err := Put(ctx, s.KV, ShardKey(name), Shard{Name: name, Topic: t.Name, Partition: p, Engine: t.Engine, Owner: t.Node}); err != nil {
			return err
		}
	}
	// The topic record is the commit point: shards without a topic are
	// leftovers of an interrupted create.
	_, err := Create(ctx, s.KV, TopicKey(t.Name), t)
	return err
}

// Topic returns one topic.
func (s Store) Topic(ctx context.Context, name string) (Record[Topic], error) {
	return Get[Topic](ctx, s.KV, TopicKey(name))
}

// Topics returns every topic in name order.
func (s Store) Topics(ctx context.Context) ([]Record[Topic], error) {
	ts, _, err := List[Topic](ctx, s.KV, PrefixTopics, false)
	return ts, err
}

// DeleteTopic removes the topic (the commit point), then its shard
// records, and returns the topic as it was when deleted.
func (s Store) DeleteTopic(ctx context.Context, name string) (Topic, error) {
	t, err := s.Topic(ctx, name)
	if err != nil {
		return Topic{}, err
	}
	if _, err := s.KV.Delete(ctx, TopicKey(name), meta.IfVersion(t.Version)); err != nil {
		return Topic{}, err
	}
	for p := range t.Value.Partitions {
		if _, err := s.KV.Delete(ctx, ShardKey(fmt.Sprintf("%s/%d", name, p))); err != nil && !errors.Is(err, meta.ErrNotFound) {
			return t.Value, err
		}
	}
	return t.Value, nil
}

// CreateLedger allocates a ledger id and records the ledger (state OPEN).
func (s Store) CreateLedger(ctx context.Context, l Ledger) (Record[Ledger], error) {
	c, err := Update(ctx, s.KV, KeyLedgerIDs, true, func(c *Counter) error { c.Last++; return nil })
	if err != nil {
		return Record[Ledger]{}, err
	}
	l.ID, l.State, l.LastEntry = c.Value.Last, LedgerOpen, -1
	if l.CreatedAt.IsZero() {
		l.CreatedAt = time.Now().UTC()
	}
	if err := l.Validate(); err != nil {
		return Record[Ledger]{}, err
	}
	v, err := Create(ctx, s.KV, LedgerKey(l.ID), l)
	return Record[Ledger]{Value: l, Version: v}, err
}

// Ledger returns a ledger's metadata.
func (s Store) Ledger(ctx context.Context, id uint64) (Record[Ledger], error) {
	return Get[Ledger](ctx, s.KV, LedgerKey(id))
}

// CASLedger writes a ledger's metadata if its version is still version:
// the journal's ensemble changes, recovery and close are CASes against the
// version it read (meta.ErrVersionMismatch means another writer won).
func (s Store) CASLedger(ctx context.Context, version uint64, l Ledger) (uint64, error) {
	if err := l.Validate(); err != nil {
		return 0, err
	}
	return CAS(ctx, s.KV, LedgerKey(l.ID), version, l)
}

// AppendLedger appends a ledger id to a shard's log (creating the log).
func (s Store) AppendLedger(ctx context.Context, shard string, id uint64) (Record[Log], error) {
	return Update(ctx, s.KV, LogKey(shard), true, func(l *Log) error {
		l.Shard = shard
		for _, x := range l.Ledgers {
			if x == id {
				return fmt.Errorf("%w: ledger %d already in log %s", ErrExists, id, shard)
			}
		}
		l.Ledgers = append(l.Ledgers, id)
		return nil
	})
}

// Log returns a shard's ledger list.
func (s Store) Log(ctx context.Context, shard string) (Record[Log], error) {
	return Get[Log](ctx, s.KV, LogKey(shard))
}

// CreateGroup records a consumer group.
func (s Store) CreateGroup(ctx context.Context, g Group) error {
	if g.CreatedAt.IsZero() {
		g.CreatedAt = time.Now().UTC()
	}
	_, err := Create(ctx, s.KV, GroupKey(g.Name), g)
	return err
}

// CommitOffset records a group's committed offset for a partition.
func (s Store) CommitOffset(ctx context.Context, group, topic string, partition int, o Offset) error {
	if o.At.IsZero() {
		o.At = time.Now().UTC()
	}
	_, err := Put(ctx, s.KV, OffsetKey(group, topic, partition), o)
	return err
}

// Offsets returns a group's committed offsets by "topic/partition".
func (s Store) Offsets(ctx context.Context, group string) (map[string]Offset, error) {
	prefix := PrefixOffsets + group + "/"
	out := map[string]Offset{}
	after := ""
	for {
		res, err := s.KV.List(ctx, prefix, meta.ListOptions{StartAfter: after})
		if err != nil {
			return nil, err
		}
		for _, e := range res.KVs {
			var o Offset
			if err := json.Unmarshal(e.Value, &o); err != nil {
				return nil, fmt.Errorf("schema: decoding %s: %w", e.Key, err)
			}
			out[strings.TrimPrefix(e.Key, prefix)] = o
		}
		if !res.More {
			return out, nil
		}
		after = res.KVs[len(res.KVs)-1].Key
	}
}

// Nodes returns every registered node and whether it is up.
func (s Store) Nodes(ctx context.Context) ([]NodeState, error) { return s.nodes(ctx, false) }

// StaleNodes is Nodes read from the contacted meta node's own state, which
// may lag the leader's (meta.Stale): it needs no leader.
func (s Store) StaleNodes(ctx context.Context) ([]NodeState, error) { return s.nodes(ctx, true) }

func (s Store) nodes(ctx context.Context, stale bool) ([]NodeState, error) {
	regs, _, err := List[Node](ctx, s.KV, PrefixNodes, stale)
	if err != nil {
		return nil, err
	}
	live, _, err := List[Node](ctx, s.KV, PrefixLive, stale)
	if err != nil {
		return nil, err
	}
	up := map[uint64]bool{}
	for _, l := range live {
		up[l.Value.ID] = true
	}
	out := make([]NodeState, len(regs))
	for i, r := range regs {
		out[i] = NodeState{Node: r.Value, Up: up[r.Value.ID]}
	}
	return out, nil
}

// RetryNotLeader calls fn again every 50 ms while it fails with
// meta.ErrNotLeader (an election under way), until ctx ends; it returns
// fn's last error. fn must be safe to repeat.
func RetryNotLeader(ctx context.Context, fn func() error) error {
	for {
		err := fn()
		if !errors.Is(err, meta.ErrNotLeader) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}
