package journal

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/shard"
)

// Names of the per-shard settings (shard.Settings) the engine reads.
const (
	SettingEnsemble    = "ensemble"
	SettingWriteQuorum = "write_quorum"
	SettingAckQuorum   = "ack_quorum"
)

// Quorum is the replication of a shard's ledgers: each entry goes to
// WriteQuorum of Ensemble bookies and is acknowledged once AckQuorum of
// them have it.
type Quorum struct {
	Ensemble, WriteQuorum, AckQuorum int
}

// Validate checks E ≥ Qw ≥ Qa ≥ 1.
func (q Quorum) Validate() error {
	if !(q.Ensemble >= q.WriteQuorum && q.WriteQuorum >= q.AckQuorum && q.AckQuorum >= 1) {
		return fmt.Errorf("%w: need ensemble >= write_quorum >= ack_quorum >= 1, have %d/%d/%d", ErrInvalidSettings, q.Ensemble, q.WriteQuorum, q.AckQuorum)
	}
	return nil
}

func (q Quorum) String() string {
	return fmt.Sprintf("%d/%d/%d", q.Ensemble, q.WriteQuorum, q.AckQuorum)
}

// Apply returns q with the quorum settings of s applied.
func (q Quorum) Apply(s shard.Settings) (Quorum, error) {
	for _, f := range []struct {
		key string
		dst *int
	}{{SettingEnsemble, &q.Ensemble}, {SettingWriteQuorum, &q.WriteQuorum}, {SettingAckQuorum, &q.AckQuorum}} {
		v, ok := s[f.key]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return q, fmt.Errorf("%w: %s = %q is not an integer", ErrInvalidSettings, f.key, v)
		}
		*f.dst = n
	}
	return q, q.Validate()
}

// Settings returns q as shard settings.
func (q Quorum) Settings() shard.Settings {
	return shard.Settings{SettingEnsemble: strconv.Itoa(q.Ensemble), SettingWriteQuorum: strconv.Itoa(q.WriteQuorum),
		SettingAckQuorum: strconv.Itoa(q.AckQuorum)}
}

// ErrInvalidSettings is returned by CreateWith for settings it cannot use.
var ErrInvalidSettings = errors.New("journal engine: invalid settings")

// Options configure an Engine.
type Options struct {
	// Client writes, reads and recovers the ledgers. Required.
	Client *client.Client
	// OwnsClient makes Close close Client too.
	OwnsClient bool
	// Meta holds the engine's shard records (and is the Client's meta).
	// Required.
	Meta meta.KV
	// Prefix is put before every shard name in meta (the shard's record
	// and its log), so that several engines can share one meta and one
	// set of bookies without their shards meeting (tests, tenants). A
	// node uses "".
	Prefix string
	// Quorum is the replication of shards created without settings.
	// Default 1/1/1.
	Quorum Quorum
	// Settings, when set, gives the settings Create uses for a shard name
	// (a node derives them from its [[storage.rules]]); nil settings mean
	// Quorum.
	Settings func(name string) shard.Settings
	// RollBytes, RollEntries and RollAge roll a shard over to a new
	// ledger once the current one holds this many payload bytes or
	// entries, or is this old (0: no limit). Default RollBytes 256 MiB.
	RollBytes   int64
	RollEntries int64
	RollAge     time.Duration
	// RetentionAge trims whole ledgers whose records are all older than
	// this (by record timestamp), checked every RetentionInterval on the
	// open shards (0: keep forever). Default RetentionInterval 1m.
	RetentionAge      time.Duration
	RetentionInterval time.Duration
	// RereplicateAfter runs a client.Auditor (one node's at a time): a bookie that the directory
	// has not listed as live for this long is lost, and the closed ledgers
	// that name it are copied to other bookies (client.Rereplicate), every
	// AuditInterval (default RereplicateAfter/4, within 1s..30s). 0: no
	// auditor.
	RereplicateAfter time.Duration
	AuditInterval    time.Duration
	// NodeID names this node as the running auditor in meta
	// (schema.KeyAuditor's value, for operators); the nodes' auditors
	// take turns, one at a time.
	NodeID string
	// Offload, when set, copies the closed ledgers of the open shards to
	// an object store and drops them from the log after its DeleteLag;
	// reads below the log's first ledger come from the objects.
	Offload *OffloadOptions
	// CacheBytes bounds the decoded entries each open shard keeps for
	// readers (recent appends and reads). Default 4 MiB.
	CacheBytes int
	// OpTimeout bounds the meta and bookie work of Close, and each step of
	// an offload (OffloadOptions.MinRate adds to it per ledger). Default
	// 30s.
	OpTimeout time.Duration
	// Registerer receives the engine's metrics (nil: none).
	Registerer prometheus.Registerer
	// Logger receives takeovers, rollovers and failures. Default
	// slog.Default().
	Logger *slog.Logger

	offloadHook       func(step string) error // tests: called after each offload step; an error stops the pass
	noOffloadLoop     bool                    // tests: passes run only when called
	offloadChunkBytes int64                   // tests: the ranged reads of offloaded ledgers (default 1 MiB)
}

// EnsureDefaults fills zero fields with their defaults and returns o.
func (o *Options) EnsureDefaults() *Options {
	if o.Quorum == (Quorum{}) {
		o.Quorum = Quorum{1, 1, 1}
	}
	if o.RollBytes == 0 && o.RollEntries == 0 && o.RollAge == 0 {
		o.RollBytes = 256 << 20
	}
	if o.RetentionInterval <= 0 {
		o.RetentionInterval = time.Minute
	}
	if o.AuditInterval <= 0 {
		o.AuditInterval = min(30*time.Second, max(time.Second, o.RereplicateAfter/4))
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 4 << 20
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Offload != nil {
		o.Offload.ensureDefaults()
	}
	if o.offloadChunkBytes <= 0 {
		o.offloadChunkBytes = defaultChunkBytes
	}
	return o
}

// Validate reports missing or invalid options.
func (o *Options) Validate() error {
	if o.Client == nil || o.Meta == nil {
		return errors.New("journal engine: Options.Client and Options.Meta are required")
	}
	if o.RollBytes < 0 || o.RollEntries < 0 || o.RollAge < 0 || o.RetentionAge < 0 || o.RereplicateAfter < 0 {
		return errors.New("journal engine: roll, retention and re-replication limits must be >= 0")
	}
	if o.Offload != nil {
		if err := o.Offload.validate(); err != nil {
			return err
		}
	}
	return o.Quorum.Validate()
}
