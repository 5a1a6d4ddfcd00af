package node

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/engines/file"
	"github.com/quiremq/quire/engines/hdfs"
	"github.com/quiremq/quire/engines/journal"
	"github.com/quiremq/quire/engines/memory"
	"github.com/quiremq/quire/engines/objstore/s3store"
	"github.com/quiremq/quire/engines/s3"
	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
	"github.com/quiremq/quire/shard"
)

// This file is the only place that knows the concrete engines. Adding an
// engine means opening it here, listing it in config.Engines, and (if its
// shards do not survive a restart) in ephemeralEngines. The journal engine
// runs whenever the node runs meta; its shards live on the bookies that
// meta lists as live (a single node: its own).

// ephemeralEngines are the engines whose shards are gone after a restart.
var ephemeralEngines = map[string]bool{"memory": true}

// onDemandEngines need an outside service ([storage.s3], [storage.hdfs])
// and are opened only when the default engine or a rule uses them.
var onDemandEngines = []string{"s3", "hdfs"}

// fileEngineDir is where the file engine keeps its shards, under data_dir.
const fileEngineDir = "file"

// openEngines opens every engine this build has, configured from cfg, with
// their data under dataDir on fs; the journal engine's shards are in meta
// (kv) and on the cluster's bookies (nil kv: no journal engine).
func openEngines(cfg *config.Config, fs vfs.FS, dataDir string, reg prometheus.Registerer, log *slog.Logger, kv meta.KV) (map[string]shard.Engine, error) {
	mem := memory.New(memory.Options{
		ShardBudgetBytes: cfg.Storage.Memory.ShardBudgetBytes,
		Registerer:       reg,
	})
	fc := cfg.Storage.File
	segmentAge := fc.SegmentAge.Std()
	if segmentAge == 0 {
		segmentAge = -1 // config: 0 = never roll by age; file engine: negative
	}
	st, err := offloadStore(cfg)
	if err != nil {
		mem.Close()
		return nil, err
	}
	offload := fileOffload(cfg, st, kv, log)
	fe, err := file.Open(file.Options{
		FS:             fs,
		Dir:            fs.PathJoin(dataDir, fileEngineDir),
		Sync:           file.SyncPolicy(fc.Sync),
		SyncInterval:   fc.SyncInterval.Std(),
		SegmentBytes:   fc.SegmentBytes,
		SegmentAge:     segmentAge,
		RetentionBytes: fc.RetentionBytes,
		RetentionAge:   fc.RetentionAge.Std(),
		Offload:        offload,
		Registerer:     reg,
		Logger:         log.With("engine", "file"),
	})
	if err != nil {
		mem.Close()
		return nil, fmt.Errorf("open file engine in %s: %w", fs.PathJoin(dataDir, fileEngineDir), err)
	}
	engines := map[string]shard.Engine{mem.Name(): mem, fe.Name(): fe}
	if kv == nil {
		return engines, nil
	}
	je, err := openJournalEngine(cfg, kv, journalOffload(cfg, st, log), reg, log.With("engine", "journal"))
	if err != nil {
		mem.Close()
		fe.Close()
		return nil, err
	}
	engines[je.Name()] = je
	for _, name := range onDemandEngines {
		if !cfg.UsesEngine(name) {
			continue
		}
		e, err := openObjectEngine(cfg, name, kv, reg, log.With("engine", name))
		if err != nil {
			for _, o := range engines {
				o.Close()
			}
			return nil, err
		}
		engines[name] = e
	}
	return engines, nil
}

// openObjectEngine opens the s3 or hdfs engine (engines/s3, engines/hdfs)
// when a topic rule or the default engine uses it. Each node keeps its
// shards under its own object prefix and meta prefix, as the file engine
// keeps them in its own data_dir.
func openObjectEngine(cfg *config.Config, name string, kv meta.KV, reg prometheus.Registerer, log *slog.Logger) (shard.Engine, error) {
	s3c := cfg.Storage.S3
	prefix := s3c.Prefix
	if prefix == "" {
		prefix = "quire"
	}
	eo := s3.Options{
		Endpoint: s3c.Endpoint, Bucket: s3c.Bucket, Region: s3c.Region,
		AccessKey: s3c.AccessKey, SecretKey: s3c.SecretKey, PathStyle: s3c.PathStyle, TLS: s3c.TLS,
		Prefix:        fmt.Sprintf("%s/node-%d/%s/", prefix, cfg.NodeID, name),
		Meta:          kv,
		MetaPrefix:    fmt.Sprintf("/engines/%s/%d/", name, cfg.NodeID),
		FlushInterval: s3c.FlushInterval.Std(),
		FlushBytes:    s3c.FlushBytes,
		Registerer:    reg,
		Logger:        log,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if name == "hdfs" {
		h := cfg.Storage.HDFS
		e, err := hdfs.Open(ctx, hdfs.Options{Namenode: h.Namenode, Path: h.Path, User: h.User, Engine: eo})
		if err != nil {
			return nil, fmt.Errorf("open the hdfs engine at %s%s: %w", h.Namenode, h.Path, err)
		}
		return e, nil
	}
	e, err := s3.Open(ctx, eo)
	if err != nil {
		return nil, fmt.Errorf("open the s3 engine on bucket %q at %s: %w", s3c.Bucket, s3c.Endpoint, err)
	}
	log.Info("s3 engine serving", "endpoint", s3c.Endpoint, "bucket", s3c.Bucket, "prefix", eo.Prefix)
	return e, nil
}

// offloadStore opens the bucket of [storage.s3] when the file or journal
// engine offloads to it (nil: no topic offloads).
func offloadStore(cfg *config.Config) (*s3store.Store, error) {
	if !cfg.UsesOffload("s3") {
		return nil, nil
	}
	s3 := cfg.Storage.S3
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := s3store.Open(ctx, s3store.Options{
		Endpoint: s3.Endpoint, Bucket: s3.Bucket, Region: s3.Region,
		AccessKey: s3.AccessKey, SecretKey: s3.SecretKey, PathStyle: s3.PathStyle, TLS: s3.TLS,
	})
	if err != nil {
		return nil, fmt.Errorf("open [storage.s3] bucket %q at %s for offload: %w", s3.Bucket, s3.Endpoint, err)
	}
	return st, nil
}

// s3Prefix is [storage.s3]'s prefix ("" = "quire").
func s3Prefix(cfg *config.Config) string {
	if p := cfg.Storage.S3.Prefix; p != "" {
		return p
	}
	return "quire"
}

// fileOffload configures the file engine's tiered offload when
// [storage.file] or a file rule sets offload = "s3": segments go to st (the
// bucket of [storage.s3]) under <prefix>/node-<id>/file/, their locations
// to meta (under /offload/file/<node id>/) when the node runs meta, else to
// each shard's OFFLOAD file.
func fileOffload(cfg *config.Config, st *s3store.Store, kv meta.KV, log *slog.Logger) *file.OffloadOptions {
	if st == nil || !offloads(cfg, "file") {
		return nil
	}
	o := &file.OffloadOptions{
		Store:     st,
		Prefix:    fmt.Sprintf("%s/node-%d/file", s3Prefix(cfg), cfg.NodeID),
		DeleteLag: cfg.Storage.File.OffloadDeleteLag.Std(),
		Policy:    func(name string) (bool, time.Duration) { return offloadPolicy(cfg, "file", name) },
	}
	if kv != nil {
		o.Manifest = file.MetaManifest{KV: kv, Prefix: fmt.Sprintf("/offload/file/%d/", cfg.NodeID)}
	}
	log.Info("file engine offloads sealed segments", "endpoint", cfg.Storage.S3.Endpoint, "bucket", cfg.Storage.S3.Bucket, "prefix", o.Prefix)
	return o
}

// journalOffload configures the journal engine's tiered offload when
// [storage.journal] or a journal rule sets offload = "s3": closed ledgers
// go to st under <prefix>/journal/ (one prefix for the cluster: journal
// shards move between nodes), their locations to meta.
func journalOffload(cfg *config.Config, st *s3store.Store, log *slog.Logger) *journal.OffloadOptions {
	if st == nil || !offloads(cfg, journal.Name) {
		return nil
	}
	o := &journal.OffloadOptions{
		Store:     st,
		Prefix:    s3Prefix(cfg) + "/journal",
		DeleteLag: cfg.Storage.Journal.OffloadDeleteLag.Std(),
		Policy:    func(name string) (bool, time.Duration) { return offloadPolicy(cfg, journal.Name, name) },
	}
	log.Info("journal engine offloads closed ledgers", "endpoint", cfg.Storage.S3.Endpoint, "bucket", cfg.Storage.S3.Bucket, "prefix", o.Prefix)
	return o
}

// offloads reports whether any shard of engine may offload to s3: its
// section or one of its rules says so.
func offloads(cfg *config.Config, engine string) bool {
	on, _ := frontEndOffload(cfg, engine)
	return on
}

// frontEndOffload is the offload of a front-end's hashed shards of engine
// (they hold topics of every rule of the engine): on when the engine's
// section or any of its rules offloads, with the shortest of their delete
// lags (a rule that inherits the section's offload counts with its own).
func frontEndOffload(cfg *config.Config, engine string) (bool, time.Duration) {
	target, base := cfg.Storage.File.Offload, cfg.Storage.File.OffloadDeleteLag.Std()
	if engine == journal.Name {
		target, base = cfg.Storage.Journal.Offload, cfg.Storage.Journal.OffloadDeleteLag.Std()
	}
	on, lag := target == "s3", base
	for _, r := range cfg.Storage.Rules {
		if r.Engine != engine || !(r.Offload == "s3" || r.Offload == "" && target == "s3") { // "": the section's
			continue
		}
		l := base
		if r.OffloadDeleteLag != 0 {
			l = r.OffloadDeleteLag.Std()
		}
		if !on || l < lag {
			lag = l
		}
		on = true
	}
	return on, lag
}

// offloadPolicy decides whether shard name of engine ("file" or
// "journal") offloads, and its delete lag: by the rule of its topic (the
// name without its partition). An MQTT shard ("mqtt/<engine>/<n>") holds
// topics of every rule of the engine, hashed together: frontEndOffload.
func offloadPolicy(cfg *config.Config, engine, name string) (bool, time.Duration) {
	if frontEndShard(name) {
		return frontEndOffload(cfg, engine)
	}
	target, lag := cfg.Offload(engine, partitionSuffix.ReplaceAllString(name, ""))
	return target == "s3", lag
}

// openJournalEngine opens the journal engine: a ledger client over meta's
// live bookie nodes (this node's own bookie among them when it has the
// bookie role), shards replicated (and offloaded, with offload non-nil) as
// [storage.journal] and the topic's [[storage.rules]] say.
func openJournalEngine(cfg *config.Config, kv meta.KV, offload *journal.OffloadOptions, reg prometheus.Registerer, log *slog.Logger) (*journal.Engine, error) {
	cl, err := client.New(client.Options{Meta: kv, Directory: client.MetaDirectory{Store: schema.Store{KV: kv}}, Logger: log, Registerer: reg,
		// An idle shard's writer replaces a lost bookie as the auditor
		// counts it lost, so that its last fragment is re-replicated too.
		ReplaceMissingAfter: cfg.Storage.Journal.RereplicateAfter.Std()})
	if err != nil {
		return nil, err
	}
	jc := cfg.Storage.Journal
	base := cfg.JournalQuorum()
	e, err := journal.Open(journal.Options{
		Client:      cl,
		OwnsClient:  true,
		Meta:        kv,
		Quorum:      journal.Quorum(base),
		Settings:    func(name string) shard.Settings { return journalSettings(cfg, name) },
		RollBytes:   jc.LedgerBytes,
		RollEntries: jc.LedgerEntries,
		RollAge:     jc.LedgerAge.Std(),
		Registerer:  reg,
		// Retention of the shards this node has open (those it writes).
		RetentionAge:     jc.RetentionAge.Std(),
		RereplicateAfter: jc.RereplicateAfter.Std(),
		NodeID:           strconv.FormatUint(cfg.NodeID, 10),
		Offload:          offload,
		Logger:           log,
	})
	if err != nil {
		cl.Close()
		return nil, fmt.Errorf("open journal engine: %w", err)
	}
	log.Info("journal engine open", "quorum", journal.Quorum(base).String(), "rules", len(cfg.Storage.Rules))
	return e, nil
}

// partitionSuffix is the "/<partition>" of a shard name ("<topic>/<p>",
// topics.ShardName; MQTT's hashed shards are "mqtt/<engine>/<n>").
var partitionSuffix = regexp.MustCompile(`/[0-9]+$`)

// journalSettings is the replication of a new journal shard: the first
// [[storage.rules]] entry matching its topic (the shard name without its
// partition) routes it; if that rule is a journal rule, its
// ensemble/write_quorum/ack_quorum apply over [storage.journal]'s. MQTT's
// hashed shards hold the topics of every rule that picks the journal, so
// they take [storage.journal]'s. The engine records the settings with the
// shard, so later config changes do not move an existing shard.
func journalSettings(cfg *config.Config, name string) shard.Settings {
	q := cfg.JournalQuorum()
	if frontEndShard(name) {
		return journal.Quorum(q).Settings()
	}
	topic := partitionSuffix.ReplaceAllString(name, "")
	for i := range cfg.Storage.Rules {
		r := &cfg.Storage.Rules[i]
		if shard.MatchFilter(r.Match, topic) {
			if r.Engine == journal.Name {
				q = r.Quorum(q)
			}
			break
		}
	}
	return journal.Quorum(q).Settings()
}

// metaKV is the meta store the broker's engines use: nil when the node
// runs no meta (then there is no journal engine).
func (b *broker) metaKV() meta.KV {
	if b.meta == nil {
		return nil
	}
	return b.meta.kv()
}

// frontEndShard reports whether a shard belongs to a front-end rather than
// to a topic of the registry: MQTT hashes its topics onto "mqtt/<engine>/<n>"
// shards (frontends/mqtt.ShardName), which must survive a restart.
func frontEndShard(name string) bool { return strings.HasPrefix(name, "mqtt/") }
