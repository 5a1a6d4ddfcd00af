// Package node runs one Quire node: it builds the components from a
// config.Config, starts them in order — common servers (inner gRPC, admin
// HTTP), meta, journal (the bookie), broker — and stops them in reverse.
//
// Components: the common servers; meta (package meta: Raft over the inner
// gRPC server, role "meta"), which holds the node registrations, the topic
// registry, the journal's ledgers and logs, the bookie's cookie and the
// MQTT routes; the bookie (the journal's storage server, when [bookie]
// enabled: the node's "bookie" role); and the broker: the engines (memory,
// file with tiered offload, journal, and s3/hdfs when a rule uses them),
// the router that picks a topic's engine, the topic registry, the MQTT
// front-end on every configured listener (TCP, TLS, WebSocket, WSS, QUIC)
// and cross-node MQTT routing (mqttcluster.go: each node pulls from every
// other node the messages its sessions subscribe to). Kafka and AMQP are
// not built yet; the node logs which configured listeners it does not
// serve instead of pretending to.
//
// Meta: with one address in meta_addrs (the default) the node bootstraps a
// one-voter cluster by itself; nodes given the same several addresses form
// one cluster. Start waits for a leader ([meta] leader_wait_timeout) before
// the journal and broker start, then registers the node under a lease that
// it heartbeats ([meta] node_lease_ttl); GET /api/v1/cluster lists every
// registered node, up or down by its lease, and the meta leader. /readyz is
// 503 while meta has no leader.
//
// Memory: Start sets the Go runtime's soft memory limit
// (runtime/debug.SetMemoryLimit) from memory_limit — by default 80% of the
// memory the process may use, its cgroup's limit or the machine's — unless
// GOMEMLIMIT is set, logs it, exports it as quire_node_memory_limit_bytes,
// and warns when the memory engine's MQTT shards alone may hold half of it
// (memlimit.go); Stop puts the previous limit back.
//
// Topics are records in meta (topics.MetaStore): a topic created through
// any node is listed by every node. Its shards, though, stay local to the
// node it was created through (topics.Topic.Node): other nodes list the
// topic with its partitions marked as hosted there. A topics.json left by an older
// build is copied into meta at the first start with meta and renamed
// topics.json.migrated.
//
// Services of the inner gRPC server are registered when the node is built
// (gRPC accepts none once it serves) and answer UNAVAILABLE until their
// component runs; meta's, whose implementation is built only by Start, are
// reserved then and dispatched through the server's unknown-service handler
// (grpcServer.reserve). RunBookie runs a bookie alone (`quire bookie`).
//
// Usage:
//
//	n, err := node.New(node.Options{Config: cfg, Logger: log})
//	...
//	err = n.Run(ctx, 30*time.Second) // start, wait for ctx, stop
//
// Data directory layout:
//
//	<data_dir>/LOCK          held (fcntl lock) while the node runs
//	<data_dir>/meta/         meta: raft/ (Pebble log and stable store), snapshots/
//	<data_dir>/file/         the file engine's shards
//	<data_dir>/bookie/       the bookie: cookie, entry logs, index, journal/
//	<data_dir>/mqtt/         MQTT sessions, cursors, QoS 2 state, retained and delayed messages (Pebble)
//	<data_dir>/mqttcluster/cursors.json   how far this node has pulled each peer's MQTT shards
//	<data_dir>/topics.json.migrated   an older build's topic registry, now in meta
//
// The bookie's cookie store is meta (key /cookies/bookies/<bookie id>)
// unless [bookie] cookie_store names a file.
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/internal/metrics"
	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/internal/version"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// Options configure a Node.
type Options struct {
	// Config is the node's configuration. Required; New validates it.
	Config *config.Config
	// Logger receives the node's logs; default slog.Default().
	Logger *slog.Logger
	// FS holds the data directory; default vfs.Default (the real disk).
	FS vfs.FS
	// Registry collects every metric of the node and is served on /metrics;
	// default metrics.NewRegistry() (Go runtime and process collectors).
	Registry *prometheus.Registry
}

// Node is one Quire node.
type Node struct {
	cfg     *config.Config
	log     *slog.Logger
	fs      vfs.FS
	reg     *prometheus.Registry
	dataDir string

	grpc   *grpcServer
	admin  *adminServer
	meta   *metaComponent
	bookie *bookieComponent // nil unless [bookie] enabled
	broker *broker
	slots  []*slot

	fatal chan error // a component died while running

	mu    sync.Mutex
	phase string // new, starting, ready, stopping, stopped
	lock  io.Closer

	memLimit memLimitState // what Start did to the runtime's memory limit (memlimit.go)

	m nodeMetrics
}

type nodeMetrics struct {
	state    *prometheus.GaugeVec
	startS   *prometheus.GaugeVec
	ready    prometheus.Gauge
	info     *prometheus.GaugeVec
	started  prometheus.Gauge
	memLimit prometheus.Gauge
}

// ErrConfig marks errors in the configuration given to New (also
// errors.Is(err, config.ErrInvalid)).
var ErrConfig = config.ErrInvalid

// New builds a node from opts. It does no I/O: Start does.
func New(opts Options) (*Node, error) {
	if opts.Config == nil {
		return nil, fmt.Errorf("node: Options.Config is required: %w", ErrConfig)
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Registry == nil {
		opts.Registry = metrics.NewRegistry()
	}
	dataDir, err := filepath.Abs(opts.Config.DataDir)
	if err != nil {
		return nil, fmt.Errorf("data_dir %q: %w", opts.Config.DataDir, err)
	}
	n := &Node{
		cfg: opts.Config, log: opts.Logger, fs: opts.FS, reg: opts.Registry, dataDir: dataDir,
		fatal: make(chan error, 1), phase: "new",
	}
	n.initMetrics()
	n.grpc = newGRPCServer(n.cfg.GRPC.Addr, n.log.With("component", "grpc"), n.report, grpcServerOptions(n.cfg.Bookie.MaxEntrySize)...)
	n.meta, err = newMetaComponent(n.cfg, n.fs, n.dataDir, n.reg, n.grpc, n.log.With("component", "meta"), n.selfNode)
	if err != nil {
		return nil, err
	}
	if n.cfg.Bookie.Enabled {
		bo, err := nodeBookieOptions(n.cfg, n.fs, n.dataDir)
		if err != nil {
			return nil, err
		}
		if bo.Cookies == nil {
			bo.Cookies = &metaCookieStore{kv: n.meta.kv, timeout: 30 * time.Second}
		}
		bo.Registerer = n.reg
		blog := n.log.With("component", "bookie")
		bo.Logf = func(format string, args ...any) { blog.Warn(fmt.Sprintf(format, args...)) }
		n.bookie = newBookieComponent(bo, n.grpc, blog)
		n.bookie.collectGarbage(n.meta.kv, n.cfg.Bookie.GCInterval.Std(), n.reg)
	}
	n.admin = &adminServer{addr: n.cfg.Admin.Addr, log: n.log.With("component", "admin"), report: n.report}
	n.broker = newBroker(n.cfg, n.fs, n.dataDir, n.reg, n.log.With("component", "broker"), n.meta)
	n.admin.handler = newAdminHandler(adminDeps{
		readiness: n.Readiness,
		cluster:   n.Cluster,
		topics: func() topicService {
			if r := n.broker.topics(); r != nil {
				return r
			}
			return nil
		},
		ledgers:  n.Ledgers,
		gatherer: n.reg,
		reg:      n.reg,
		log:      n.log.With("component", "admin"),
		pprof:    n.cfg.Admin.Pprof,
	})
	// Start order: common servers → meta → journal → broker.
	comps := []Component{n.grpc, n.admin, n.meta}
	if n.bookie != nil {
		comps = append(comps, n.bookie)
	}
	comps = append(comps, n.broker)
	for _, c := range comps {
		n.slots = append(n.slots, &slot{c: c, state: StatePending})
	}
	for _, s := range n.slots {
		n.setState(s, StatePending, nil)
	}
	return n, nil
}

func (n *Node) initMetrics() {
	ns := metrics.Namespace
	n.m = nodeMetrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "node", Name: "component_state",
			Help: "1 for the state each node component is in (pending, starting, running, stopping, stopped, failed), else 0."},
			[]string{"component", "state"}),
		startS: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "node", Name: "component_start_duration_seconds",
			Help: "How long each node component took to start."}, []string{"component"}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: "node", Name: "ready",
			Help: "1 when every component of the node has started, else 0."}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "node", Name: "info",
			Help: "Always 1; labels describe the node."}, []string{"version", "commit", "node_id", "cluster"}),
		started: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: "node", Name: "start_time_seconds",
			Help: "When the node became ready, in seconds since the Unix epoch."}),
		memLimit: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: "node", Name: "memory_limit_bytes",
			Help: "The Go runtime's soft memory limit in effect since the node started (memory_limit or GOMEMLIMIT), 0 when there is none."}),
	}
	metrics.Register(n.reg, n.m.state, n.m.startS, n.m.ready, n.m.info, n.m.started, n.m.memLimit)
	v := version.Get()
	n.m.info.WithLabelValues(v.Version, v.Commit, strconv.FormatUint(n.cfg.NodeID, 10), n.cfg.ClusterName).Set(1)
}

func (n *Node) setState(s *slot, st State, err error) {
	s.set(st, err)
	for _, x := range allStates {
		v := 0.0
		if x == st {
			v = 1
		}
		n.m.state.WithLabelValues(s.c.Name(), string(x)).Set(v)
	}
}

// report records that a running component died; Run then stops the node.
func (n *Node) report(err error) {
	n.log.Error("component failed", "err", err)
	select {
	case n.fatal <- err:
	default:
	}
}

// Start locks the data directory and starts every component in order. If
// one fails, those already started are stopped in reverse and the error
// names the component.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	if n.phase != "new" {
		n.mu.Unlock()
		return fmt.Errorf("node: Start called twice")
	}
	n.phase = "starting"
	n.mu.Unlock()

	v := version.Get()
	n.log.Info("starting quire node", "version", v.Version, "commit", v.Commit, "node_id", n.cfg.NodeID,
		"cluster", n.cfg.ClusterName, "data_dir", n.dataDir)
	if err := n.lockDataDir(); err != nil {
		n.setPhase("stopped")
		return err
	}
	n.applyMemoryLimit()
	n.logNotBuilt()

	for i, s := range n.slots {
		name := s.c.Name()
		n.setState(s, StateStarting, nil)
		t0 := time.Now()
		err := s.c.Start(ctx)
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			n.setState(s, StateFailed, err)
			n.log.Error("component failed to start", "component", name, "err", err)
			// Stop what started, in reverse (including s, in case it left
			// something behind).
			n.stopSlots(context.WithoutCancel(ctx), i)
			n.restoreMemoryLimit()
			n.unlockDataDir()
			n.setPhase("stopped")
			return fmt.Errorf("start %s: %w", name, err)
		}
		s.started = time.Since(t0)
		n.m.startS.WithLabelValues(name).Set(s.started.Seconds())
		n.setState(s, StateRunning, nil)
		n.log.Info("component started", "component", name, "took", s.started.Round(time.Microsecond))
	}
	n.setPhase("ready")
	n.grpc.setServing("", true)
	n.m.ready.Set(1)
	n.m.started.Set(float64(time.Now().UnixNano()) / 1e9)
	n.log.Info("node ready", "admin", n.AdminAddr().String(), "grpc", n.GRPCAddr().String())
	return nil
}

func (n *Node) setPhase(p string) {
	n.mu.Lock()
	n.phase = p
	n.mu.Unlock()
}

// logNotBuilt says which configured parts this build does not run.
func (n *Node) logNotBuilt() {
	if n.bookie != nil {
		n.log.Info("this node runs a bookie (journal.v1.Bookie on the inner gRPC server); journal topics are replicated over the live bookies meta lists, memory and file topics are local to the node a topic was created through",
			"cookie_store", n.bookieCookieStore())
	} else {
		n.log.Info("[bookie] enabled = false: journal topics use the other nodes' bookies; memory and file topics are local to the node a topic was created through")
	}
	var ls []string
	for _, l := range n.cfg.Listeners() {
		if l.Addr != "" && !servedListener(n.cfg, l.Key) {
			ls = append(ls, l.Key+"="+l.Addr)
		}
	}
	if len(ls) > 0 {
		n.log.Warn("these configured listeners are NOT served: QUIC, Kafka and AMQP front-ends are not built yet, and MQTT tls/wss need [mqtt] tls_cert_file and tls_key_file",
			"listeners", strings.Join(ls, " "))
	}
}

// lockDataDir creates and locks the data directory.
func (n *Node) lockDataDir() error {
	if err := vfs.MkdirAll(n.fs, n.dataDir); err != nil {
		return fmt.Errorf("create data_dir %s: %w", n.dataDir, err)
	}
	lockPath := n.fs.PathJoin(n.dataDir, "LOCK")
	l, err := n.fs.Lock(lockPath)
	if err != nil {
		return fmt.Errorf("data_dir %s is in use by another quire node (cannot lock %s: %v)", n.dataDir, lockPath, err)
	}
	n.mu.Lock()
	n.lock = l
	n.mu.Unlock()
	return nil
}

func (n *Node) unlockDataDir() {
	n.mu.Lock()
	l := n.lock
	n.lock = nil
	n.mu.Unlock()
	if l != nil {
		if err := l.Close(); err != nil {
			n.log.Warn("could not release the data_dir lock", "err", err)
		}
	}
}

// stopSlots stops slots[0..last] in reverse order and returns their errors.
func (n *Node) stopSlots(ctx context.Context, last int) error {
	var errs []error
	for i := last; i >= 0; i-- {
		s := n.slots[i]
		st, _ := s.get()
		if st == StatePending || st == StateStopped {
			continue
		}
		name := s.c.Name()
		if st != StateFailed {
			n.setState(s, StateStopping, nil)
		}
		t0 := time.Now()
		if err := s.c.Stop(ctx); err != nil {
			n.setState(s, StateFailed, err)
			n.log.Error("component failed to stop", "component", name, "err", err)
			errs = append(errs, fmt.Errorf("stop %s: %w", name, err))
			continue
		}
		if st != StateFailed {
			n.setState(s, StateStopped, nil)
		}
		n.log.Info("component stopped", "component", name, "took", time.Since(t0).Round(time.Microsecond))
	}
	return errors.Join(errs...)
}

// Stop stops every component in reverse start order (the broker flushes and
// closes every engine) and releases the data directory. It returns once all
// are stopped, or ctx ends. Stop is idempotent.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	if n.phase != "ready" {
		n.mu.Unlock()
		return nil
	}
	n.phase = "stopping"
	n.mu.Unlock()
	n.log.Info("stopping quire node")
	n.m.ready.Set(0)
	n.grpc.setServing("", false)
	err := n.stopSlots(ctx, len(n.slots)-1)
	n.restoreMemoryLimit()
	n.unlockDataDir()
	n.setPhase("stopped")
	if err != nil {
		return err
	}
	n.log.Info("node stopped")
	return nil
}

// Run starts the node, waits until ctx ends or a component dies, and stops
// the node within stopTimeout. It returns nil after a clean stop on ctx's
// end, including when ctx ends while the node is still starting.
func (n *Node) Run(ctx context.Context, stopTimeout time.Duration) error {
	if err := n.Start(ctx); err != nil {
		if ctx.Err() != nil {
			n.log.Info("shutdown requested while starting; stopped", "cause", context.Cause(ctx))
			return nil
		}
		return err
	}
	var cause error
	select {
	case <-ctx.Done():
		n.log.Info("shutdown requested", "cause", context.Cause(ctx))
	case cause = <-n.fatal:
	}
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	err := n.Stop(sctx)
	if cause != nil {
		return errors.Join(cause, err)
	}
	return err
}

// GRPCAddr returns the inner gRPC server's bound address (useful with port
// 0), nil when it is not running.
func (n *Node) GRPCAddr() net.Addr { return n.grpc.Addr() }

// AdminAddr returns the admin HTTP server's bound address, nil when it is
// not running.
func (n *Node) AdminAddr() net.Addr { return n.admin.Addr() }

// MQTTAddr returns the bound address of the MQTT listener called name
// ("tcp", "ws", "tls" or "wss"), nil when it is not served.
func (n *Node) MQTTAddr(name string) net.Addr { return n.broker.MQTTAddr(name) }

// DataDir returns the absolute path of the data directory.
func (n *Node) DataDir() string { return n.dataDir }

// Readiness reports whether every component runs and meta has a leader,
// and which components do not ("meta" also when it has no leader).
func (n *Node) Readiness() adminapi.Readiness {
	n.mu.Lock()
	phase := n.phase
	n.mu.Unlock()
	rd := adminapi.Readiness{Ready: phase == "ready"}
	for _, s := range n.slots {
		st, err := s.get()
		c := adminapi.Component{Name: s.c.Name(), State: string(st)}
		if err != nil {
			c.Error = err.Error()
		}
		ok := st == StateRunning
		if s.c == Component(n.meta) && ok {
			if srv := n.meta.server(); srv == nil {
				ok = false
			} else if id, _ := srv.Leader(); id == 0 {
				ok = false
				c.Error = "no meta leader: a majority of meta_addrs must be up and reachable"
			}
		}
		rd.Components = append(rd.Components, c)
		if !ok {
			rd.Ready = false
			rd.NotReady = append(rd.NotReady, s.c.Name())
		}
	}
	return rd
}

// clusterReadTimeout bounds the linearizable read of the node list.
const clusterReadTimeout = 3 * time.Second

// Cluster describes the cluster from meta: every registered node, up while
// its lease lives, and the meta leader. Without a leader it falls back to
// this node's own copy of meta (Stale, with Error saying why).
func (n *Node) Cluster() adminapi.Cluster {
	c := adminapi.Cluster{ClusterName: n.cfg.ClusterName, MetaMode: "raft", Node: n.cfg.NodeID, Nodes: []adminapi.Node{}}
	srv := n.meta.server()
	if srv == nil {
		c.Stale, c.Error = true, "meta is not running on this node (starting or stopping)"
		return c
	}
	c.MetaLeader, _ = srv.Leader()
	ctx, cancel := context.WithTimeout(context.Background(), clusterReadTimeout)
	defer cancel()
	st := schema.Store{KV: srv}
	nodes, err := st.Nodes(ctx)
	if err != nil {
		c.Stale, c.Error = true, fmt.Sprintf("no linearizable read from meta (%v); showing this node's copy", err)
		if nodes, err = st.StaleNodes(context.Background()); err != nil {
			c.Error = err.Error()
			return c
		}
	}
	voters := map[uint64]bool{}
	if vs, err := n.cfg.Voters(); err == nil {
		for _, v := range vs {
			voters[v.ID] = true
		}
	}
	for _, ns := range nodes {
		an := adminapi.Node{ID: ns.ID, Addr: ns.Addr, GRPCAddr: ns.GRPCAddr, AdminAddr: ns.AdminAddr, Roles: ns.Roles,
			State: "down", Version: ns.Version, Voter: voters[ns.ID], StartedAt: ns.StartedAt}
		if ns.Up {
			an.State = "up"
		}
		if an.Roles == nil {
			an.Roles = []string{}
		}
		c.Nodes = append(c.Nodes, an)
	}
	return c
}

// Roles lists what this node runs, as /api/v1/cluster reports it.
func (n *Node) Roles() []string {
	if n.bookie != nil {
		return []string{"meta", "bookie", "broker"}
	}
	return []string{"meta", "broker"}
}

func (n *Node) bookieCookieStore() string {
	if n.cfg.Bookie.CookieStore != "" {
		return n.cfg.Bookie.CookieStore
	}
	return "meta"
}

// Meta returns the node's meta server while it runs (nil otherwise).
func (n *Node) Meta() *meta.Server { return n.meta.server() }

// servedListener reports whether this build serves the listener with the
// config key key (when its address is set).
func servedListener(cfg *config.Config, key string) bool {
	switch key {
	case "mqtt.tcp", "mqtt.ws":
		return true
	case "mqtt.tls", "mqtt.wss", "mqtt.quic":
		return cfg.MQTT.TLSConfigured()
	}
	return false
}
