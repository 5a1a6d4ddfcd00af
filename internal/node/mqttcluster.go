package node

// Cross-node MQTT routing, the node's side: the design is described at the
// top of frontends/mqtt/cluster.go. Here: the routes in meta, the
// mqttcluster.v1.Forwarder service that streams this node's records to its
// peers (after its retained snapshot for a peer that is fresh or missed
// records: sendSnapshot), one puller per peer that stores the peer's
// records here (pullSnapshot first, when announced), and the pullers'
// cursors in <data_dir>/mqttcluster/cursors.json.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/quiremq/quire/frontends/mqtt"
	"github.com/quiremq/quire/internal/metrics"
	mqttclusterv1 "github.com/quiremq/quire/internal/proto/mqttcluster/v1"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
	"github.com/quiremq/quire/shard"
)

// PrefixMQTTRoutes holds one record per node: the distinct filters of its
// MQTT sessions (mqttRoutes), kept after the node stops.
const PrefixMQTTRoutes = "/mqtt/routes/"

// MQTTRouteKey is the key of node id's routes.
func MQTTRouteKey(id uint64) string { return fmt.Sprintf("%s%020d", PrefixMQTTRoutes, id) }

// mqttRoutes is a node's record under PrefixMQTTRoutes: every filter of
// its sessions (shared ones without "$share/{group}/"), and its shared
// subscriptions (a peer's Pull stream says them while it is open; these
// serve while it is not: mqttcluster_shared.go).
type mqttRoutes struct {
	Node      uint64        `json:"node"`
	Filters   []string      `json:"filters"`
	Groups    []routesGroup `json:"groups,omitempty"`
	UpdatedAt time.Time     `json:"updated_at"`
}

// routesGroup is a shared subscription in mqttRoutes.
type routesGroup struct {
	Group  string `json:"group"`
	Filter string `json:"filter"`
}

// Directory and file of the pullers' cursors under data_dir.
const (
	mqttClusterDir     = "mqttcluster"
	mqttClusterCursors = "cursors.json"
)

// Timing and sizes of the cluster loops.
const (
	routeRefresh    = time.Second            // the tree's version checked (the filters are rebuilt when it moved) and the cursors taken for the next change
	routeWriteGap   = 250 * time.Millisecond // between two writes of this node's routes to meta (and a failed one's retry)
	peerPoll        = 2 * time.Second        // registered nodes listed
	cursorFlush     = 100 * time.Millisecond // cursors written when changed
	tailWait        = 200 * time.Millisecond // a serving stream's longest idle wait
	pullHeartbeat   = 5 * time.Second        // an idle serving stream sends an empty batch this often
	pullSilence     = 30 * time.Second       // a puller hearing nothing this long reconnects
	pullBackoffMin  = 100 * time.Millisecond
	pullBackoffMax  = 10 * time.Second
	forwardRecords  = 512     // records per scan of a shard
	forwardBytes    = 1 << 20 // bytes per scan of a shard
	clusterOpTimout = 10 * time.Second
	snapshotWait    = time.Second // how long a retained snapshot waits for the stored messages below the stream's start to be handed over
)

var forwarderService = mqttclusterv1.Forwarder_ServiceDesc.ServiceName

type mqttClusterMetrics struct {
	forwarded  *prometheus.CounterVec // messages pulled from a peer and stored here
	served     *prometheus.CounterVec // messages this node streamed to a peer
	lag        *prometheus.GaugeVec   // records of a peer's shards behind this node's cursors
	errors     *prometheus.CounterVec // failed pulls (connect, stream, store)
	connected  *prometheus.GaugeVec   // 1 while the pull stream of a peer is open
	snapshot   *prometheus.CounterVec // retained entries of a peer's snapshots taken here
	epochs     prometheus.Counter     // changes of the nodes a shared subscription's messages go to
	redirected prometheus.Counter     // orphans sent or delivered to another node
	unroutable prometheus.Counter     // orphans no node with a member was left for
}

func newMQTTClusterMetrics(reg prometheus.Registerer) *mqttClusterMetrics {
	ns := metrics.Namespace
	m := &mqttClusterMetrics{
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "mqtt_cluster", Name: "forwarded_messages_total",
			Help: "MQTT messages published on a peer node, pulled by this node and stored here for its sessions."}, []string{"peer"}),
		served: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "mqtt_cluster", Name: "served_messages_total",
			Help: "MQTT messages published on this node and streamed to a peer that subscribes to them."}, []string{"peer"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "mqtt_cluster", Name: "lag_records",
			Help: "Records of a peer's MQTT shards this node has not pulled yet (as of the peer's last batch)."}, []string{"peer"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "mqtt_cluster", Name: "peer_errors_total",
			Help: "Failed pulls from a peer (connect, stream or local store errors); each is retried with backoff."}, []string{"peer"}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "mqtt_cluster", Name: "peer_connected",
			Help: "1 while this node's pull stream from the peer is open."}, []string{"peer"}),
		snapshot: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "mqtt_cluster", Name: "retained_snapshot_entries_total",
			Help: "Retained-message entries of a peer's snapshot (sent at first contact) that were newer than this node's and taken."}, []string{"peer"}),
	}
	m.forwarded = metrics.Reuse(reg, m.forwarded)
	m.served = metrics.Reuse(reg, m.served)
	m.lag = metrics.Reuse(reg, m.lag)
	m.errors = metrics.Reuse(reg, m.errors)
	m.connected = metrics.Reuse(reg, m.connected)
	m.snapshot = metrics.Reuse(reg, m.snapshot)
	m.epochs = metrics.Reuse(reg, prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "mqtt_cluster", Name: "shared_epochs_total",
		Help: "Changes of the set of nodes that take the messages published here for a shared subscription (a member's node joined, left, connected, went away)."}))
	m.redirected = metrics.Reuse(reg, prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "mqtt_cluster", Name: "shared_redirected_total",
		Help: "Messages published here for a shared subscription that the node chosen could not deliver (its members had left) and that went to another node."}))
	m.unroutable = metrics.Reuse(reg, prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: "mqtt_cluster", Name: "shared_unroutable_total",
		Help: "Messages published here for a shared subscription that no node with a member was left for (dropped)."}))
	return m
}

// mqttCluster routes MQTT messages between this node and its peers while
// the broker's MQTT server runs.
type mqttCluster struct {
	mqttclusterv1.UnimplementedForwarderServer

	self uint64
	srv  *mqtt.Server
	src  *mqtt.ClusterSource
	kv   func() meta.KV
	fs   vfs.FS
	path string // the cursors file
	log  *slog.Logger
	m    *mqttClusterMetrics

	smu    sync.Mutex // orders a stream's wg.Add before stop's Wait
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	share    *shareDispatch // the node of each message of a shared subscription published here
	redirect redirects      // orphans on their way to another node

	// The routes the pullers send, and the cursors a change's request
	// carries (Since): see routesLoop.
	fmu     sync.Mutex
	filters []string                     // of the non-shared subscriptions
	groups  []mqtt.SharedRoute           // shared subscriptions with a member here
	marks   map[string]uint64            // this node's shards' high watermarks, taken before groups were computed or last found current
	gen     uint64                       // changes of filters or groups
	treeVer uint64                       // the server's RoutesVersion filters were computed or last found current at
	fresh   map[uint64]map[string]uint64 // peer → cursors taken before filters were computed or last found current
	since   map[uint64]map[string]uint64 // peer → cursors taken before filters were, as its stream last sent them (sent)
	sent    map[uint64]uint64            // peer → gen its stream last sent
	floor   map[uint64]sinceFloor        // peer → the lowest Since of its next change (raiseSince)
	changed chan struct{}                // closed and replaced when filters change

	cmu     sync.Mutex
	cursors map[uint64]map[string]uint64 // peer → its shard → next offset wanted; a peer here is not fresh
	dirty   bool

	pmu     sync.Mutex
	pullers map[uint64]*puller
}

type puller struct {
	addr    string
	cancel  context.CancelFunc
	done    chan struct{}
	orphans chan []mqtt.Orphan // for the peer's stream to send back (handBack)
}

// startMQTTCluster starts routing between srv and the other nodes of the
// meta cluster. dir is data_dir.
func startMQTTCluster(srv *mqtt.Server, self uint64, kv func() meta.KV, fs vfs.FS, dataDir string, m *mqttClusterMetrics, log *slog.Logger) (*mqttCluster, error) {
	src, err := srv.ClusterSource()
	if err != nil {
		return nil, err
	}
	dir := fs.PathJoin(dataDir, mqttClusterDir)
	if err := vfs.MkdirAll(fs, dir); err != nil {
		return nil, err
	}
	c := &mqttCluster{self: self, srv: srv, src: src, kv: kv, fs: fs, path: fs.PathJoin(dir, mqttClusterCursors),
		log: log.With("component", "mqtt-cluster"), m: m, changed: make(chan struct{}), pullers: map[uint64]*puller{},
		cursors: map[uint64]map[string]uint64{}, since: map[uint64]map[string]uint64{}, sent: map[uint64]uint64{}, floor: map[uint64]sinceFloor{},
		redirect: redirects{queue: map[uint64][]mqtt.Orphan{}, wakes: map[uint64]map[chan struct{}]struct{}{}, tried: map[mqtt.Orphan][]uint64{}}}
	if err := c.loadCursors(); err != nil {
		return nil, err
	}
	c.fresh = c.cursorSnapshot()
	c.share = newShareDispatch(self, src.Shards, m.epochs)
	c.marks = highs(src.Shards())
	c.filters, c.groups, c.treeVer = srv.ClusterRoutes()
	c.share.setGroups(self, c.groups, true)
	srv.SetSharedDispatch(c.share, self, c.handBack)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wg.Add(3)
	go c.routesLoop()
	go c.peersLoop()
	go c.flushLoop()
	return c, nil
}

// stop ends the pullers and the streams served to peers, and writes the
// cursors.
func (c *mqttCluster) stop() error {
	c.smu.Lock()
	c.cancel()
	c.smu.Unlock()
	c.wg.Wait()
	c.srv.SetSharedDispatch(nil, 0, nil) // a single node again: every group here takes every message
	return c.flushCursors()
}

// ---- routes ----

// routesLoop keeps the filters current: it rebuilds them when the
// server's subscription tree reports a change (at once: the change is made
// before the subscription's SUBACK), wakes the pullers to send the new set
// (with Since), and writes the set to meta (at most every routeWriteGap,
// retried as often while meta refuses). Every routeRefresh it checks the
// tree's version and takes the cursors again (refreshRoutes).
func (c *mqttCluster) routesLoop() {
	defer c.wg.Done()
	var written mqttRoutes
	wrote := false
	var lastWrite time.Time
	var writeDue <-chan time.Time // a write waiting for the gap, or a retry
	t := time.NewTicker(routeRefresh)
	defer t.Stop()
	for {
		changed := c.srv.RoutesChanged()
		rs := c.refreshRoutes()
		if writeDue == nil && (!wrote || !rs.equal(written)) {
			if wait := time.Until(lastWrite.Add(routeWriteGap)); wait > 0 {
				writeDue = time.After(wait)
			} else if err := c.writeRoutes(rs); err != nil {
				if c.ctx.Err() == nil {
					c.log.Warn("writing this node's MQTT routes to meta; retrying", "err", err)
				}
				writeDue = time.After(routeWriteGap)
			} else {
				written, wrote, lastWrite = rs, true, time.Now()
			}
		}
		select {
		case <-c.ctx.Done():
			return
		case <-changed:
		case <-t.C:
		case <-writeDue:
			writeDue = nil
		}
	}
}

// refreshRoutes rebuilds the filters and groups if the server's routes
// version moved, and the groups' online flags in any case (closing
// c.changed if they differ), and returns the routes for meta.
//
// A change's request carries Since: cursors on the peer's shards taken
// before any subscription whose filter it adds was made. Everything the
// peer stored after such a subscription took effect is at or above the
// cursor this node had on its shard then (the peer's high watermark bounds
// every cursor it hands out), so the peer reads again from Since with the
// added filters and no message published after the SUBACK is missed. The
// cursors are taken first, then the version read: if it is the one the
// filters were computed at, no subscription changed since, and the
// cursors serve as Since for the next change (fresh; since for the peers
// whose stream sent these filters); if not, the filters are computed now,
// after the cursors were taken. Cursors only grow, so an older Since
// stays right, and only costs a longer read (a stream that starts lower,
// on a peer that lost records, lowers Since with them: lowerSince).
func (c *mqttCluster) refreshRoutes() mqttRoutes {
	snap := c.cursorSnapshot()
	marks := highs(c.src.Shards())
	v := c.srv.RoutesVersion()
	c.fmu.Lock()
	defer c.fmu.Unlock()
	var fs []string
	var groups []mqtt.SharedRoute
	if v != c.treeVer {
		fs, groups, c.treeVer = c.srv.ClusterRoutes()
	} else {
		fs, groups = c.filters, c.srv.SharedOnline(c.groups)
	}
	if !slices.Equal(groups, c.groups) {
		c.share.setGroups(c.self, groups, true)
		c.replayJoined(c.marks, joined(c.groups, groups))
	}
	c.marks = marks
	if !slices.Equal(fs, c.filters) || !slices.Equal(groups, c.groups) {
		c.filters, c.groups = fs, groups
		c.gen++
		close(c.changed)
		c.changed = make(chan struct{})
	}
	c.fresh = snap
	for peer, gen := range c.sent {
		if gen == c.gen {
			c.since[peer] = snap[peer]
		}
	}
	return routesOf(c.self, c.filters, c.groups)
}

// routesOf is the record in meta of node's routes.
func routesOf(node uint64, plain []string, groups []mqtt.SharedRoute) mqttRoutes {
	r := mqttRoutes{Node: node, Filters: slices.Clone(plain)}
	for _, g := range groups {
		r.Filters = append(r.Filters, g.Filter)
		r.Groups = append(r.Groups, routesGroup{Group: g.Group, Filter: g.Filter})
	}
	slices.Sort(r.Filters)
	r.Filters = slices.Compact(r.Filters)
	return r
}

// equal reports whether r and o hold the same routes.
func (r mqttRoutes) equal(o mqttRoutes) bool {
	return r.Node == o.Node && slices.Equal(r.Filters, o.Filters) && slices.Equal(r.Groups, o.Groups)
}

// sharedRoutes are the shared subscriptions of r (none online: meta does
// not say).
func (r mqttRoutes) sharedRoutes() []mqtt.SharedRoute {
	out := make([]mqtt.SharedRoute, len(r.Groups))
	for i, g := range r.Groups {
		out[i] = mqtt.SharedRoute{Group: g.Group, Filter: g.Filter}
	}
	return out
}

// cursorSnapshot copies the cursors.
func (c *mqttCluster) cursorSnapshot() map[uint64]map[string]uint64 {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	out := make(map[uint64]map[string]uint64, len(c.cursors))
	for peer, m := range c.cursors {
		out[peer] = maps(m)
	}
	return out
}

func (c *mqttCluster) writeRoutes(rs mqttRoutes) error {
	kv := c.kv()
	if kv == nil {
		return errors.New("meta is not running")
	}
	ctx, cancel := context.WithTimeout(c.ctx, clusterOpTimout)
	defer cancel()
	return schema.RetryNotLeader(ctx, func() error {
		rs.UpdatedAt = time.Now().UTC()
		_, err := schema.Put(ctx, kv, MQTTRouteKey(c.self), rs)
		return err
	})
}

// sendFilters returns the request for peer's stream to send: the filter
// set and the groups, and the cursors to send as Since with them (a later
// request); and a channel closed when they change. The stream is taken to
// have sent them.
func (c *mqttCluster) sendFilters(peer uint64) (*mqttclusterv1.PullRequest, <-chan struct{}) {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	since, ok := c.since[peer]
	if !ok {
		since = c.fresh[peer]
		c.since[peer] = since
	}
	c.sent[peer] = c.gen
	if f, ok := c.floor[peer]; ok && c.gen > f.gen {
		// The change made after the floor was set goes out now.
		delete(c.floor, peer)
		raised := maps(since)
		for name, off := range f.cursors {
			// A shard without a Since (made on the peer after the
			// stream started) would be read again from the stream's
			// start on it.
			if cur, ok := raised[name]; !ok || cur < off {
				raised[name] = off
			}
		}
		since = raised
	}
	return &mqttclusterv1.PullRequest{Filters: c.filters, Groups: protoGroups(c.groups), Since: since}, c.changed
}

// sinceFloor is the lowest Since of a peer's next filter change.
type sinceFloor struct {
	cursors map[string]uint64
	gen     uint64 // the filters' gen when it was set
}

// raiseSince has the next filter change sent to peer carry a Since no
// lower than floor on its shards: a session handed over to this node
// (mqttsessions.go) had been handed the peer's messages below floor, so
// the read again for its filters, new here, starts there. Another
// subscription made here before that change is sent and whose filter the
// same change adds may then miss the peer's messages below floor that
// were published after its SUBACK (a narrow window).
func (c *mqttCluster) raiseSince(peer uint64, floor map[string]uint64) {
	if len(floor) == 0 {
		return
	}
	c.fmu.Lock()
	defer c.fmu.Unlock()
	f, ok := c.floor[peer]
	if !ok {
		f = sinceFloor{cursors: map[string]uint64{}}
	}
	f.gen = c.gen
	for name, off := range floor {
		f.cursors[name] = max(f.cursors[name], off)
	}
	c.floor[peer] = f
}

// lowerSince lowers peer's Since to the cursors its stream starts from
// where they are lower (the peer lost records: a cursor above a shard's
// high watermark restarts at its low one), so that Since stays at or below
// the cursors.
func (c *mqttCluster) lowerSince(peer uint64, start map[string]uint64) {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	for _, m := range []map[uint64]map[string]uint64{c.since, c.fresh} {
		var lowered map[string]uint64
		for name, off := range start {
			if cur, ok := m[peer][name]; ok && off < cur {
				if lowered == nil {
					lowered = maps(m[peer]) // shared with the requests sent
				}
				lowered[name] = off
			}
		}
		if lowered != nil {
			m[peer] = lowered
		}
	}
}

// ---- peers ----

// peersLoop keeps one puller per other registered node with an inner gRPC
// address (registrations stay after a node stops: its puller retries with
// backoff until it returns).
func (c *mqttCluster) peersLoop() {
	defer c.wg.Done()
	defer func() {
		c.pmu.Lock()
		for id, p := range c.pullers {
			p.cancel()
			<-p.done
			delete(c.pullers, id)
		}
		c.pmu.Unlock()
	}()
	t := time.NewTicker(peerPoll)
	defer t.Stop()
	for {
		if kv := c.kv(); kv != nil {
			ctx, cancel := context.WithTimeout(c.ctx, clusterOpTimout)
			nodes, _, err := schema.List[schema.Node](ctx, kv, schema.PrefixNodes, true)
			cancel()
			if err != nil {
				if c.ctx.Err() == nil {
					c.log.Debug("listing the nodes in meta", "err", err)
				}
			} else {
				c.syncPullers(nodes)
				c.syncSharedRoutes(kv, nodes)
			}
		}
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// syncSharedRoutes gives the dispatch the shared subscriptions of the
// registered peers as their routes in meta say (used while a peer has no
// stream open here), and drops the nodes no longer registered.
func (c *mqttCluster) syncSharedRoutes(kv meta.KV, nodes []schema.Record[schema.Node]) {
	ctx, cancel := context.WithTimeout(c.ctx, clusterOpTimout)
	defer cancel()
	routes, _, err := schema.List[mqttRoutes](ctx, kv, PrefixMQTTRoutes, true)
	if err != nil {
		if c.ctx.Err() == nil {
			c.log.Debug("listing the MQTT routes in meta", "err", err)
		}
		return
	}
	registered := map[uint64]bool{c.self: true}
	for _, n := range nodes {
		registered[n.Value.ID] = true
	}
	for _, r := range routes {
		if r.Value.Node != c.self && registered[r.Value.Node] {
			c.share.setGroups(r.Value.Node, r.Value.sharedRoutes(), false)
		}
	}
	c.share.forgetExcept(registered)
}

func (c *mqttCluster) syncPullers(nodes []schema.Record[schema.Node]) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	seen := map[uint64]bool{}
	for _, r := range nodes {
		n := r.Value
		addr := peerAddr(n)
		if n.ID == c.self || addr == "" {
			continue
		}
		seen[n.ID] = true
		if p := c.pullers[n.ID]; p != nil {
			if p.addr == addr {
				continue
			}
			p.cancel()
			<-p.done
		}
		ctx, cancel := context.WithCancel(c.ctx)
		p := &puller{addr: addr, cancel: cancel, done: make(chan struct{}), orphans: make(chan []mqtt.Orphan, pullerOrphans)}
		c.pullers[n.ID] = p
		go func() {
			defer close(p.done)
			c.pull(ctx, n.ID, addr, p.orphans)
		}()
	}
	for id, p := range c.pullers {
		if !seen[id] {
			p.cancel()
			<-p.done
			delete(c.pullers, id)
		}
	}
}

// peerAddr is where a node's inner gRPC server is reached: its meta_addrs
// entry (what Raft dials), else the address its server listens on unless
// that is a wildcard one (":1228" names no host to dial).
func peerAddr(n schema.Node) string {
	if n.Addr != "" {
		return n.Addr
	}
	host, _, err := net.SplitHostPort(n.GRPCAddr)
	if err != nil || host == "" || net.ParseIP(host).IsUnspecified() {
		return ""
	}
	return n.GRPCAddr
}

// pull pulls from peer at addr until ctx ends, reconnecting with backoff.
func (c *mqttCluster) pull(ctx context.Context, peer uint64, addr string, orphans chan []mqtt.Orphan) {
	label := strconv.FormatUint(peer, 10)
	log := c.log.With("peer", peer, "addr", addr)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		log.Error("MQTT routing: cannot build a client for the peer", "err", err)
		c.m.errors.WithLabelValues(label).Inc()
		return
	}
	defer cc.Close()
	cl := mqttclusterv1.NewForwarderClient(cc)
	backoff := pullBackoffMin
	failures := 0
	for ctx.Err() == nil {
		got, err := c.pullOnce(ctx, cl, peer, label, orphans)
		c.m.connected.WithLabelValues(label).Set(0)
		if ctx.Err() != nil {
			return
		}
		c.m.errors.WithLabelValues(label).Inc()
		if got {
			backoff, failures = pullBackoffMin, 0
		}
		failures++
		// The first failures of a peer that is down are expected (it
		// restarts); say so at Info, and at Warn once it persists.
		if failures == 5 {
			log.Warn("MQTT routing: the peer keeps failing; retrying with backoff", "err", err, "backoff", backoff)
		} else {
			log.Info("MQTT routing: pull from the peer failed; retrying", "err", err, "backoff", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, pullBackoffMax)
	}
}

// pullOnce runs one Pull stream; got reports whether it received anything
// (the peer was up).
func (c *mqttCluster) pullOnce(ctx context.Context, cl mqttclusterv1.ForwarderClient, peer uint64, label string, orphans chan []mqtt.Orphan) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cl.Pull(ctx)
	if err != nil {
		return false, err
	}
	first, changed := c.sendFilters(peer)
	first.Since = nil
	filters := first.Filters
	c.cmu.Lock()
	cur, known := c.cursors[peer]
	first.NodeId, first.Fresh, first.Cursors = c.self, !known, maps(cur)
	c.cmu.Unlock()
	if err := stream.Send(first); err != nil {
		return false, err
	}
	sendErr := make(chan error, 1)
	go func(changed <-chan struct{}) {
		for {
			var req *mqttclusterv1.PullRequest
			select {
			case <-ctx.Done():
				return
			case <-changed:
				req, changed = c.sendFilters(peer)
			case os := <-orphans:
				req = &mqttclusterv1.PullRequest{Orphans: protoOrphans(os)}
			}
			if err := stream.Send(req); err != nil {
				sendErr <- err
				cancel()
				return
			}
		}
	}(changed)
	hello, err := stream.Recv()
	if err != nil {
		return false, err
	}
	if hello.NodeId != peer {
		return true, fmt.Errorf("the peer's address answers as node %d", hello.NodeId)
	}
	// A peer that stops answering without closing the connection (the
	// server sends an empty batch at least every pullHeartbeat).
	silent := time.AfterFunc(pullSilence, cancel)
	defer silent.Stop()
	if hello.RetainedSnapshot {
		// Durable before the cursors are: a crash in between pulls the
		// snapshot again.
		if err := c.pullSnapshot(ctx, stream, peer, label, silent); err != nil {
			return true, err
		}
	}
	c.cmu.Lock()
	if c.cursors[peer] == nil {
		c.cursors[peer] = map[string]uint64{}
	}
	for name, off := range hello.Start {
		c.cursors[peer][name] = off
	}
	c.dirty = true
	c.cmu.Unlock()
	c.lowerSince(peer, hello.Start)
	c.m.connected.WithLabelValues(label).Set(1)
	c.log.Info("MQTT routing: pulling from peer", "peer", peer, "filters", len(filters), "fresh", !known)
	lag := map[string]uint64{}
	var recs []shard.Record
	for {
		resp, err := stream.Recv()
		if err != nil {
			select {
			case serr := <-sendErr:
				return true, serr
			default:
			}
			if ctx.Err() != nil && !silent.Stop() {
				return true, fmt.Errorf("the peer sent nothing for %s", pullSilence)
			}
			return true, err
		}
		silent.Reset(pullSilence)
		if resp.Shard == "" {
			continue // a heartbeat
		}
		recs = recordsOf(recs[:0], resp.Records)
		if len(recs) > 0 {
			n, os, err := c.srv.InjectForwardedFrom(ctx, peer, resp.Shard, recs)
			if err != nil {
				return true, fmt.Errorf("storing messages forwarded from shard %s: %w", resp.Shard, err)
			}
			c.m.forwarded.WithLabelValues(label).Add(float64(n))
			if len(os) > 0 {
				// Back to the peer, which chooses another node.
				select {
				case orphans <- os:
				case <-ctx.Done():
				}
			}
		}
		c.cmu.Lock()
		c.cursors[peer][resp.Shard] = resp.Next
		c.dirty = true
		c.cmu.Unlock()
		if resp.High >= resp.Next {
			lag[resp.Shard] = resp.High - resp.Next
		}
		var sum uint64
		for _, l := range lag {
			sum += l
		}
		c.m.lag.WithLabelValues(label).Set(float64(sum))
	}
}

// pullSnapshot receives the peer's retained snapshot that follows its
// hello, sets each entry newer than this node's, and makes them durable.
func (c *mqttCluster) pullSnapshot(ctx context.Context, stream mqttclusterv1.Forwarder_PullClient, peer uint64, label string, silent *time.Timer) error {
	var recs []shard.Record
	taken, total := 0, 0
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("receiving the retained snapshot: %w", err)
		}
		silent.Reset(pullSilence)
		if resp.Shard != "" {
			return errors.New("the peer sent a shard's batch before the end of its retained snapshot")
		}
		recs = recordsOf(recs[:0], resp.Retained)
		n, err := c.srv.ApplyRetained(ctx, peer, recs)
		if err != nil {
			return fmt.Errorf("storing the retained snapshot: %w", err)
		}
		taken, total = taken+n, total+len(recs)
		c.m.snapshot.WithLabelValues(label).Add(float64(n))
		if resp.RetainedDone {
			break
		}
	}
	if err := c.srv.SyncRetained(); err != nil {
		return fmt.Errorf("storing the retained snapshot: %w", err)
	}
	c.log.Info("MQTT routing: took the peer's retained messages", "peer", peer, "entries", total, "newer", taken)
	return nil
}

// recordsOf appends the records of rs to dst.
func recordsOf(dst []shard.Record, rs []*mqttclusterv1.Record) []shard.Record {
	for _, r := range rs {
		rec := shard.Record{Offset: r.Offset, Timestamp: r.Timestamp, Key: r.Key, Value: r.Value}
		for _, h := range r.Headers {
			rec.Headers = append(rec.Headers, shard.Header{Key: h.Key, Value: h.Value})
		}
		dst = append(dst, rec)
	}
	return dst
}

func maps(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// ---- cursors ----

type cursorFile struct {
	Peers map[string]map[string]uint64 `json:"peers"` // peer id → shard → next offset
}

func (c *mqttCluster) loadCursors() error {
	b, err := vfs.ReadFile(c.fs, c.path)
	if vfs.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var f cursorFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("mqtt cluster cursors %s: %w", c.path, err)
	}
	for k, v := range f.Peers {
		id, err := strconv.ParseUint(k, 10, 64)
		if err != nil {
			return fmt.Errorf("mqtt cluster cursors %s: peer %q: %w", c.path, k, err)
		}
		c.cursors[id] = v
	}
	return nil
}

// flushCursors writes the cursors if they changed. A cursor is set only
// after the messages below it were stored here, so the file never claims
// more than the shards hold; a crash before a flush means pulling a batch
// again (duplicates, not a loss).
func (c *mqttCluster) flushCursors() error {
	c.cmu.Lock()
	if !c.dirty {
		c.cmu.Unlock()
		return nil
	}
	f := cursorFile{Peers: map[string]map[string]uint64{}}
	for id, m := range c.cursors {
		f.Peers[strconv.FormatUint(id, 10)] = maps(m)
	}
	c.dirty = false
	c.cmu.Unlock()
	b, err := json.Marshal(f)
	if err == nil {
		err = vfs.WriteFileAtomic(c.fs, c.path, b)
	}
	if err != nil {
		c.cmu.Lock()
		c.dirty = true
		c.cmu.Unlock()
		return fmt.Errorf("writing the MQTT cluster cursors: %w", err)
	}
	return nil
}

func (c *mqttCluster) flushLoop() {
	defer c.wg.Done()
	t := time.NewTicker(cursorFlush)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		if err := c.flushCursors(); err != nil {
			c.log.Warn("MQTT routing", "err", err)
		}
	}
}

// ---- the service ----

// Pull implements mqttclusterv1.ForwarderServer: it streams this node's
// own records that match the puller's filters, shard by shard, from the
// puller's cursors.
func (c *mqttCluster) Pull(stream mqttclusterv1.Forwarder_PullServer) error {
	c.smu.Lock()
	if c.ctx.Err() != nil {
		c.smu.Unlock()
		return status.Error(codes.Unavailable, "MQTT is stopping on this node")
	}
	c.wg.Add(1)
	c.smu.Unlock()
	defer c.wg.Done()
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	peer := req.NodeId
	label := strconv.FormatUint(peer, 10)
	groups := sharedRoutesOf(req.Groups)
	orphan := func(o mqtt.Orphan) { c.orphaned(peer, o) }
	route := &mqtt.PeerRoute{Peer: peer, Filters: mqtt.NewFilterSet(req.Filters), Groups: mqtt.NewGroupSet(groups), Dispatch: c.share, Orphan: orphan}
	c.share.streamOpened(peer, groups)
	defer c.share.streamClosed(peer)
	updates := filterUpdates{wake: make(chan struct{}, 1), last: req.Filters, groups: groups}
	c.attachRedirects(peer, updates.wake)
	defer c.detachRedirects(peer, updates.wake)
	go func() {
		defer cancel()
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			if len(r.Orphans) > 0 {
				for _, o := range orphansOf(r.Orphans) {
					c.orphaned(peer, o)
				}
				continue
			}
			// The messages stored from now on go by the new groups
			// (at once: a node that lost its last member of a group
			// must stop being chosen for it).
			c.share.streamGroups(peer, sharedRoutesOf(r.Groups))
			updates.add(r)
		}
	}()
	pos := map[string]uint64{}
	snapshot := req.Fresh
	for _, sm := range c.src.Shards() {
		pos[sm.Name] = startOffset(sm, req.Cursors, req.Fresh)
		snapshot = snapshot || missed(sm, req.Cursors)
	}
	started := maps(pos) // where the stream started on each shard
	if err := stream.Send(&mqttclusterv1.PullResponse{NodeId: c.self, Start: pos, RetainedSnapshot: snapshot}); err != nil {
		return err
	}
	if snapshot {
		if err := c.sendSnapshot(ctx, stream, peer, pos); err != nil {
			return err
		}
	}
	c.log.Info("MQTT routing: serving a peer", "peer", peer, "filters", len(req.Filters), "fresh", req.Fresh)
	served := c.m.served.WithLabelValues(label)
	lastSend := time.Now()
	for ctx.Err() == nil {
		if u, ok := updates.take(); ok {
			next := &mqtt.PeerRoute{Peer: peer, Filters: route.Filters, Groups: route.Groups, Dispatch: c.share, Orphan: orphan}
			if u.filters != nil {
				next.Filters = u.filters
			}
			if u.groups != nil {
				next.Groups = mqtt.NewGroupSet(u.groups)
			}
			if u.filters != nil || len(u.added) > 0 {
				// What the new filters and groups take of the range
				// streamed already.
				again := &mqtt.PeerRoute{Peer: peer, Filters: next.Filters, Groups: mqtt.NewGroupSet(u.added), Dispatch: c.share}
				if err := c.rescan(ctx, stream, pos, u.since, started, again, route.Filters, served); err != nil {
					return err
				}
			}
			route = next
		}
		if os := c.takeRedirects(peer); len(os) > 0 {
			if err := c.sendRedirects(ctx, stream, peer, pos, os, served); err != nil {
				return err
			}
		}
		route.All = c.share.all()
		progressed := false
		for _, sm := range c.src.Shards() {
			from, ok := pos[sm.Name]
			if !ok {
				// A shard opened since the stream began: new to the
				// puller unless it has a cursor there.
				from = startOffset(sm, req.Cursors, false)
				pos[sm.Name], started[sm.Name] = from, from
			}
			if from >= sm.High {
				continue
			}
			recs, next, err := c.src.ScanFor(ctx, sm.Name, from, route, forwardRecords, forwardBytes)
			if err != nil {
				return err
			}
			if err := stream.Send(pullResponse(sm, next, recs)); err != nil {
				return err
			}
			served.Add(float64(len(recs)))
			pos[sm.Name] = next
			progressed = progressed || next > from
			lastSend = time.Now()
		}
		if progressed {
			continue
		}
		if time.Since(lastSend) >= pullHeartbeat {
			if err := stream.Send(&mqttclusterv1.PullResponse{}); err != nil {
				return err
			}
			lastSend = time.Now()
		}
		c.src.Wait(ctx, pos, tailWait, updates.wake)
	}
	return nil
}

// sendSnapshot sends this node's retained entries, in batches, to a
// puller whose stream starts at pos: the retained messages stored below
// pos, which the stream does not carry. It first waits (up to a second)
// until the messages below pos were handed to the retained store.
func (c *mqttCluster) sendSnapshot(ctx context.Context, stream mqttclusterv1.Forwarder_PullServer, peer uint64, pos map[string]uint64) error {
	if !c.src.AwaitDone(ctx, pos, snapshotWait) {
		c.log.Warn("MQTT routing: sending the retained snapshot before every stored message was handed over", "peer", peer)
	}
	recs := c.srv.RetainedSnapshot()
	if len(recs) == 0 {
		return stream.Send(&mqttclusterv1.PullResponse{RetainedDone: true})
	}
	for len(recs) > 0 {
		n, size := 0, 0
		for n < len(recs) && n < forwardRecords && size < forwardBytes {
			size += len(recs[n].Key) + len(recs[n].Value)
			n++
		}
		if err := stream.Send(&mqttclusterv1.PullResponse{Retained: protoRecords(recs[:n]), RetainedDone: n == len(recs)}); err != nil {
			return err
		}
		recs = recs[n:]
	}
	return nil
}

// missed reports whether a puller with cursors (its first request's)
// missed records of shard sm that its stream will not carry: its cursor
// is below the shard's low watermark (retention removed them) or above
// its high one (the shard lost records).
func missed(sm mqtt.ShardMark, cursors map[string]uint64) bool {
	cur, ok := cursors[sm.Name]
	return ok && (cur < sm.Low || cur > sm.High)
}

// filterUpdates holds the route changes a serving stream received and
// has not applied yet: the newest filters (if they changed), the newest
// groups, the groups added, and the lowest Since per shard.
type filterUpdates struct {
	wake chan struct{} // capacity 1: a change came

	mu      sync.Mutex
	last    []string           // the filters last received
	groups  []mqtt.SharedRoute // the groups last received
	pending *routeUpdate
}

// routeUpdate is a pending change of filterUpdates.
type routeUpdate struct {
	filters *mqtt.FilterSet    // nil: the filters did not change
	groups  []mqtt.SharedRoute // nil: the groups did not change
	added   []mqtt.SharedRoute // groups in groups and in none of the previous ones
	since   map[string]uint64
}

func (u *filterUpdates) add(r *mqttclusterv1.PullRequest) {
	groups := sharedRoutesOf(r.Groups)
	u.mu.Lock()
	p := u.pending
	if p == nil {
		p = &routeUpdate{since: map[string]uint64{}}
		u.pending = p
	}
	if !slices.Equal(r.Filters, u.last) {
		p.filters, u.last = mqtt.NewFilterSet(r.Filters), r.Filters
	}
	if !slices.Equal(groups, u.groups) {
		for _, g := range groups {
			if !slices.ContainsFunc(u.groups, g.Same) {
				p.added = append(p.added, g)
			}
		}
		p.groups, u.groups = groups, groups
	}
	for name, off := range r.Since {
		if cur, ok := p.since[name]; !ok || off < cur {
			p.since[name] = off
		}
	}
	u.mu.Unlock()
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// take returns the pending change (ok false: none) and forgets it.
func (u *filterUpdates) take() (routeUpdate, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	p := u.pending
	u.pending = nil
	if p == nil {
		return routeUpdate{}, false
	}
	return *p, true
}

// rescan streams, for a change of the puller's filters from old to
// route's, the records of [since, pos) of each shard that match route's
// filters and not old: the puller has every record below pos that old
// matches, and none that only the new ones do, some of which were
// published after its subscription (see refreshRoutes); and those of its
// added groups (route's) that it takes (older than the dispatch's history,
// or of a group no node had a member of). A shard the puller had no cursor
// of is read from where the stream started on it (started): it had
// received none of it. The batches leave the puller's cursor at pos.
func (c *mqttCluster) rescan(ctx context.Context, stream mqttclusterv1.Forwarder_PullServer, pos, since, started map[string]uint64, route *mqtt.PeerRoute, old *mqtt.FilterSet, served prometheus.Counter) error {
	for _, sm := range c.src.Shards() {
		from, ok := since[sm.Name]
		if !ok {
			from, ok = started[sm.Name]
		}
		until := pos[sm.Name]
		for ok && from < until {
			recs, next, err := c.src.RescanFor(ctx, sm.Name, from, until, route, old, forwardRecords, forwardBytes)
			if err != nil {
				return err
			}
			if next <= from {
				break // nothing left below until (the shard's low watermark passed it)
			}
			if len(recs) > 0 {
				if err := stream.Send(pullResponse(sm, until, recs)); err != nil {
					return err
				}
				served.Add(float64(len(recs)))
			}
			from = next
		}
	}
	return nil
}

// pullResponse is the batch of recs read from shard sm, with the
// puller's cursor once they are stored.
func pullResponse(sm mqtt.ShardMark, next uint64, recs []shard.Record) *mqttclusterv1.PullResponse {
	return &mqttclusterv1.PullResponse{Shard: sm.Name, Next: next, High: sm.High, Records: protoRecords(recs)}
}

// protoRecords is recs on the wire.
func protoRecords(recs []shard.Record) []*mqttclusterv1.Record {
	out := make([]*mqttclusterv1.Record, len(recs))
	for i := range recs {
		r := &recs[i]
		pr := &mqttclusterv1.Record{Offset: r.Offset, Timestamp: r.Timestamp, Key: r.Key, Value: r.Value}
		for _, h := range r.Headers {
			pr.Headers = append(pr.Headers, &mqttclusterv1.Header{Key: h.Key, Value: h.Value})
		}
		out[i] = pr
	}
	return out
}

// startOffset is where a stream starts on shard sm for a puller with
// cursors (its first request's): its cursor; with none, the high
// watermark for a fresh puller (new messages only) and the low one for a
// shard created after the puller first came (all of it); a cursor above
// the high watermark (the shard lost its records, as a memory engine's on
// restart) restarts at the low one.
func startOffset(sm mqtt.ShardMark, cursors map[string]uint64, fresh bool) uint64 {
	cur, ok := cursors[sm.Name]
	switch {
	case !ok && fresh:
		return sm.High
	case !ok || cur > sm.High:
		return sm.Low
	default:
		return max(cur, sm.Low)
	}
}

// ---- the broker's wiring ----

// reserveMQTTCluster declares the Forwarder service on the inner gRPC
// server (only before it starts): it answers UNAVAILABLE until MQTT runs.
func (b *broker) reserveMQTTCluster() {
	if b.meta != nil {
		b.meta.grpc.reserve(forwarderService)
	}
}

// startMQTTCluster starts cross-node routing for srv (nothing without
// meta).
func (b *broker) startMQTTCluster(srv *mqtt.Server) error {
	if b.meta == nil {
		return nil
	}
	c, err := startMQTTCluster(srv, b.cfg.NodeID, b.meta.kv, b.fs, b.dataDir, newMQTTClusterMetrics(b.reg), b.log)
	if err != nil {
		return fmt.Errorf("mqtt cluster routing: %w", err)
	}
	b.cluster = c
	if d, ok := srv.SessionDirectory().(*sessionDirectory); ok {
		d.cluster.Store(c) // raiseSince after a handover
	}
	b.meta.grpc.late.RegisterService(&mqttclusterv1.Forwarder_ServiceDesc, c)
	b.meta.grpc.setServing(forwarderService, true)
	return nil
}

// stopMQTTCluster stops routing before the MQTT server stops.
func (b *broker) stopMQTTCluster() error {
	if b.cluster == nil {
		return nil
	}
	b.meta.grpc.setServing(forwarderService, false)
	b.meta.grpc.late.detach(forwarderService)
	if d, ok := b.cluster.srv.SessionDirectory().(*sessionDirectory); ok {
		d.cluster.Store(nil)
	}
	err := b.cluster.stop()
	b.cluster = nil
	return err
}
