package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/internal/metrics"
	"github.com/quiremq/quire/internal/node/topics"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/shard"
)

// topicsFile is the topic registry's file under data_dir, until the Meta
// service holds topics.
const topicsFile = "topics.json"

// broker is the storage side of the broker: the engines, the router that
// picks a topic's engine, and the topic registry. The protocol front-ends
// will sit on top of it.
type broker struct {
	cfg     *config.Config
	fs      vfs.FS
	dataDir string
	reg     prometheus.Registerer
	log     *slog.Logger

	engines  map[string]shard.Engine
	registry atomic.Pointer[topics.Registry] // set while running
}

func newBroker(cfg *config.Config, fs vfs.FS, dataDir string, reg prometheus.Registerer, log *slog.Logger) *broker {
	b := &broker{cfg: cfg, fs: fs, dataDir: dataDir, reg: reg, log: log}
	count := func(partitions bool) func() float64 {
		return func() float64 {
			r := b.registry.Load()
			if r == nil {
				return 0
			}
			t, p := r.Count(context.Background())
			if partitions {
				return float64(p)
			}
			return float64(t)
		}
	}
	metrics.Register(reg,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: "broker", Name: "topics",
			Help: "Topics registered on this node."}, count(false)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: "broker", Name: "partitions",
			Help: "Partitions (shards) of the topics registered on this node."}, count(true)),
	)
	return b
}

func (b *broker) Name() string { return "broker" }

func (b *broker) Start(ctx context.Context) error {
	engines, err := openEngines(b.cfg, b.fs, b.dataDir, b.reg, b.log)
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
	path := b.fs.PathJoin(b.dataDir, topicsFile)
	store, err := topics.OpenFileStore(b.fs, path)
	if err != nil {
		return errors.Join(err, b.closeEngines())
	}
	reg := topics.NewRegistry(topics.Options{Store: store, Router: router, Ephemeral: ephemeralEngines, Logger: b.log})
	if err := reg.Open(ctx); err != nil {
		return errors.Join(err, b.closeEngines())
	}
	b.registry.Store(reg)
	n, p := reg.Count(ctx)
	b.log.Info("broker storage open", "topics", n, "partitions", p, "default_engine", router.Default(),
		"rules", len(rules), "registry", path)
	return nil
}

// topics returns the registry, nil unless the broker is running.
func (b *broker) topics() *topics.Registry { return b.registry.Load() }

func (b *broker) Stop(context.Context) error {
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
