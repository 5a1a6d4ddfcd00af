package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/engines/journal"
	"github.com/quiremq/quire/frontends/listen"
	"github.com/quiremq/quire/frontends/mqtt"
	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/internal/metrics"
	"github.com/quiremq/quire/internal/node/topics"
	"github.com/quiremq/quire/internal/version"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
	"github.com/quiremq/quire/shard"
)

// topicsFile is the topic registry of a node without meta (older builds)
// under data_dir; with meta, it is migrated into meta once at start and
// renamed to migratedTopicsFile.
const (
	topicsFile         = "topics.json"
	migratedTopicsFile = "topics.json.migrated"
)

// broker is the storage side of the broker: the engines, the router that
// picks a topic's engine, and the topic registry. The protocol front-ends
// will sit on top of it.
type broker struct {
	cfg     *config.Config
	fs      vfs.FS
	dataDir string
	reg     prometheus.Registerer
	log     *slog.Logger

	meta *metaComponent // the topic registry's store; nil: topics.json

	engines  map[string]shard.Engine
	registry atomic.Pointer[topics.Registry] // set while running
	mqtt     *mqtt.Server                    // nil when no MQTT listener is served
	mqttDB   *store.Store                    // the MQTT sessions and retained messages, under data_dir/mqtt
	cluster  *mqttCluster                    // cross-node MQTT routing (mqttcluster.go); nil without meta
	stopSync context.CancelFunc
	syncDone chan struct{}
}

func newBroker(cfg *config.Config, fs vfs.FS, dataDir string, reg prometheus.Registerer, log *slog.Logger, m *metaComponent) *broker {
	b := &broker{cfg: cfg, fs: fs, dataDir: dataDir, reg: reg, log: log, meta: m}
	b.reserveMQTTCluster()
	metrics.Register(reg, &topicCollector{b: b})
	return b
}

// topicCollector reports quire_broker_topics and quire_broker_partitions
// from one count of the registry per scrape (the topics are in meta).
type topicCollector struct{ b *broker }

var (
	topicsDesc = prometheus.NewDesc(metrics.Namespace+"_broker_topics", "Topics registered on this node.", nil, nil)
	partsDesc  = prometheus.NewDesc(metrics.Namespace+"_broker_partitions", "Partitions (shards) of the topics registered on this node.", nil, nil)
)

func (c *topicCollector) Describe(ch chan<- *prometheus.Desc) { ch <- topicsDesc; ch <- partsDesc }

func (c *topicCollector) Collect(ch chan<- prometheus.Metric) {
	var t, p int
	if r := c.b.registry.Load(); r != nil {
		// Bound the read, so that a scrape does not hang while meta has no
		// leader (it then reports 0).
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		t, p = r.Count(ctx)
		cancel()
	}
	ch <- prometheus.MustNewConstMetric(topicsDesc, prometheus.GaugeValue, float64(t))
	ch <- prometheus.MustNewConstMetric(partsDesc, prometheus.GaugeValue, float64(p))
}

func (b *broker) Name() string { return "broker" }

func (b *broker) Start(ctx context.Context) error {
	engines, err := openEngines(b.cfg, b.fs, b.dataDir, b.reg, b.log, b.metaKV())
	if err != nil {
		return err
	}
	b.engines = engines
	rules := make([]shard.Rule, len(b.cfg.Storage.Rules))
	for i, r := range b.cfg.Storage.Rules {
		rules[i] = shard.Rule{Match: r.Match, Engine: r.Engine}
	}
	router, err := shard.NewRouter(b.cfg.Storage.DefaultEngine, rules, engines)
	if err != nil {
		return errors.Join(err, b.closeEngines())
	}
	store, where, err := b.openStore(ctx)
	if err != nil {
		return errors.Join(err, b.closeEngines())
	}
	var nodeID uint64
	if b.meta != nil {
		nodeID = b.cfg.NodeID
	}
	reg := topics.NewRegistry(topics.Options{Store: store, Router: router, Ephemeral: ephemeralEngines, Foreign: frontEndShard, Logger: b.log, NodeID: nodeID})
	if err := reg.Open(ctx); err != nil {
		return errors.Join(err, b.closeEngines())
	}
	b.registry.Store(reg)
	if b.meta != nil {
		b.startSync(reg)
	}
	n, p := reg.Count(ctx)
	b.log.Info("broker storage open", "topics", n, "partitions", p, "default_engine", router.Default(),
		"rules", len(rules), "registry", where)
	if err := b.startMQTT(ctx, router); err != nil {
		return errors.Join(err, b.stopStorage())
	}
	return nil
}

// mqttStoreDir holds the MQTT broker's local store (sessions, cursors,
// retained messages) under data_dir.
const mqttStoreDir = "mqtt"

// maxConnections bounds the protocol connections of a node, under the
// process's 20,000 open files (shards, segments and peers need the rest).
const maxConnections = 15000

// mqttListeners returns the MQTT listeners this node serves: tcp and ws when
// configured, tls, wss and quic when configured with a certificate.
func mqttListeners(c *config.MQTT, lim *listen.Limiter) ([]listen.Config, error) {
	var ls []listen.Config
	if c.TCP != "" {
		ls = append(ls, listen.Config{Name: "tcp", Addr: c.TCP, Limiter: lim})
	}
	if c.WS != "" {
		ls = append(ls, listen.Config{Name: "ws", Kind: listen.WebSocket, Addr: c.WS, Limiter: lim})
	}
	if c.TLSConfigured() && (c.TLS != "" || c.WSS != "" || c.QUIC != "") {
		tc, err := listen.LoadTLS(c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt: tls_cert_file / tls_key_file: %w", err)
		}
		if c.TLS != "" {
			ls = append(ls, listen.Config{Name: "tls", Addr: c.TLS, TLS: tc, Limiter: lim})
		}
		if c.WSS != "" {
			ls = append(ls, listen.Config{Name: "wss", Kind: listen.WebSocket, Addr: c.WSS, TLS: tc, Limiter: lim})
		}
		if c.QUIC != "" {
			ls = append(ls, listen.Config{Name: "quic", Kind: listen.QUIC, Addr: c.QUIC, TLS: tc, Limiter: lim})
		}
	}
	return ls, nil
}

func (b *broker) startMQTT(ctx context.Context, router *shard.Router) error {
	ls, err := mqttListeners(&b.cfg.MQTT, listen.NewLimiter(maxConnections))
	if err != nil || len(ls) == 0 {
		return err
	}
	log := b.log.With("component", "mqtt")
	db, err := store.Open(store.Options{FS: b.fs, Dir: b.fs.PathJoin(b.dataDir, mqttStoreDir), Logger: log})
	if err != nil {
		return err
	}
	retained, err := store.NewClusterRetained(db, b.cfg.NodeID) // the origin of its retained sets (mqtt cluster.go)
	if err != nil {
		return errors.Join(err, db.Close())
	}
	authn, acl, scram, err := mqttAuth(&b.cfg.MQTT, b.reg)
	if err != nil {
		return errors.Join(err, db.Close())
	}
	var sessions mqtt.SessionDirectory // which node owns a session (mqttsessions.go)
	if b.meta != nil {
		sessions = newSessionDirectory(b.cfg.NodeID, b.meta.kv, b.reg, log)
	}
	srv, err := mqtt.NewServer(mqtt.Options{Listeners: ls, Sessions: sessions, Storage: mqtt.NewShardStorage(router, 0).NodeScoped(b.cfg.NodeID, journal.Name), Store: db, Retained: retained,
		Auth: authn, ACL: acl, SCRAM: scram, Version: "quire " + version.Get().String(),
		MaxInflight: b.cfg.MQTT.MaxInflight, MaxQueued: b.cfg.MQTT.MaxQueued, MaxPacketSize: b.cfg.MQTT.MaxPacketSize,
		MaxPublishRate: b.cfg.MQTT.MaxPublishRate, MaxKeepAlive: uint16(b.cfg.MQTT.MaxKeepAlive), Registerer: b.reg, Logger: log})
	if err != nil {
		return errors.Join(err, db.Close())
	}
	if err := srv.Start(ctx); err != nil {
		return errors.Join(err, srv.Stop(ctx), db.Close())
	}
	if err := b.startMQTTCluster(srv); err != nil {
		return errors.Join(err, srv.Stop(ctx), db.Close())
	}
	b.mqttDB = db
	b.mqtt = srv
	for _, l := range ls {
		b.log.Info("MQTT listener serving", "listener", "mqtt."+l.Name, "addr", srv.Addr(l.Name))
	}
	return nil
}

// MQTTAddr returns the bound address of the MQTT listener called name
// ("tcp", "ws", "tls", "wss"), or nil.
func (b *broker) MQTTAddr(name string) net.Addr {
	if b.mqtt == nil {
		return nil
	}
	return b.mqtt.Addr(name)
}

// openStore returns the topic registry's store: meta when the node runs
// it, after migrating an older build's topics.json into it once (the file
// is then renamed topics.json.migrated); else topics.json.
func (b *broker) openStore(ctx context.Context) (topics.Store, string, error) {
	path := b.fs.PathJoin(b.dataDir, topicsFile)
	if b.meta == nil {
		s, err := topics.OpenFileStore(b.fs, path)
		return s, path, err
	}
	kv := b.meta.kv()
	if kv == nil {
		return nil, "", errors.New("broker: meta is not running")
	}
	existed := b.meta.existed
	if _, err := b.fs.Stat(path); err == nil {
		old, err := topics.OpenFileStore(b.fs, path)
		if err != nil {
			return nil, "", err
		}
		n, err := topics.Migrate(ctx, old, topics.NewMetaStore(kv, true), b.cfg.NodeID)
		if err != nil {
			return nil, "", fmt.Errorf("migrating %s into meta: %w", path, err)
		}
		dst := b.fs.PathJoin(b.dataDir, migratedTopicsFile)
		if err := b.fs.Rename(path, dst); err != nil {
			return nil, "", fmt.Errorf("migrated %s into meta, but cannot rename it: %w", path, err)
		}
		if err := vfs.SyncDir(b.fs, b.dataDir); err != nil {
			return nil, "", err
		}
		b.log.Info("migrated the local topic registry into meta", "topics", n, "from", path, "renamed_to", dst)
		existed = true
	} else if !vfs.IsNotExist(err) {
		return nil, "", err
	}
	return topics.NewMetaStore(kv, existed), "meta", nil
}

// startSync follows topic deletes in meta: a topic hosted here but deleted
// through another node has its shards deleted here (Registry.Sync).
func (b *broker) startSync(reg *topics.Registry) {
	ctx, cancel := context.WithCancel(context.Background())
	b.stopSync, b.syncDone = cancel, make(chan struct{})
	go func() {
		defer close(b.syncDone)
		for ctx.Err() == nil {
			kv := b.meta.kv()
			if kv == nil {
				return
			}
			b.sync(ctx, reg) // whatever was deleted before the watch starts
			for resp := range kv.Watch(ctx, schema.PrefixTopics, 0) {
				if resp.Err != nil {
					break // compacted, or meta stopped: watch again from now
				}
				for _, e := range resp.Events {
					if e.Type == meta.EventDelete {
						b.sync(ctx, reg)
						break
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
}

func (b *broker) sync(ctx context.Context, reg *topics.Registry) {
	if err := reg.Sync(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, shard.ErrClosed) {
		b.log.Warn("deleting the shards of topics deleted through other nodes", "err", err)
	}
}

// topics returns the registry, nil unless the broker is running.
func (b *broker) topics() *topics.Registry { return b.registry.Load() }

func (b *broker) Stop(ctx context.Context) error {
	var errs []error
	if b.mqtt != nil {
		if err := b.stopMQTTCluster(); err != nil {
			errs = append(errs, err)
		}
		// Front-ends first: no append may arrive once engines close.
		if err := b.mqtt.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop mqtt: %w", err))
		}
		b.mqtt = nil
		if err := b.mqttDB.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close mqtt store: %w", err))
		}
		b.mqttDB = nil
	}
	return errors.Join(append(errs, b.stopStorage())...)
}

// stopStorage stops the registry and closes the engines.
func (b *broker) stopStorage() error {
	if b.stopSync != nil {
		b.stopSync()
		<-b.syncDone
		b.stopSync = nil
	}
	if r := b.registry.Swap(nil); r != nil {
		r.Close()
	}
	return b.closeEngines()
}

// closeEngines flushes and closes every engine.
func (b *broker) closeEngines() error {
	var errs []error
	for name, e := range b.engines {
		if err := e.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close engine %s: %w", name, err))
		}
	}
	b.engines = nil
	return errors.Join(errs...)
}
