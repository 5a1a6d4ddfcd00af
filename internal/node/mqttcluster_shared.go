package node

// Shared subscriptions across the cluster, the origin's side: which node
// delivers a message published here to each shared group (the design is
// in frontends/mqtt/doc.go, "Shared subscriptions in a cluster").

import (
	"context"
	"hash/fnv"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/frontends/mqtt"
	"github.com/quiremq/quire/frontends/pubsub"
	mqttclusterv1 "github.com/quiremq/quire/internal/proto/mqttcluster/v1"
	"github.com/quiremq/quire/shard"
)

// shareEpochsKept bounds the membership history kept per group: a message
// older than the oldest epoch kept is taken to be of it.
const shareEpochsKept = 64

// shareDispatch is an mqtt.SharedDispatch: for each shared subscription
// (group, filter) of the cluster, the nodes with a member, and the
// history of the set of nodes a message published here goes to (an
// epoch), each epoch starting at the high watermarks of this node's
// shards when it began. A message is of the latest epoch that began at or
// below its offset, and goes to one of its nodes picked by its position,
// so the answer for a message is the same whenever it is asked: when it
// is delivered here, and when each peer's stream reads it, however late.
// A message older than the history (stored before this node started) goes
// to every node that has a member of the group: at least once, as the
// choice made before the restart is not known.
//
// The nodes of an epoch are the first non-empty of: the reachable nodes
// (this one, and the peers with an open Pull stream here) with an online
// member; the reachable nodes with a member; every node with a member (a
// peer that is down gets its messages when it pulls again). A peer's
// groups are those its stream sent, else those of its routes in meta.
type shareDispatch struct {
	self  uint64
	marks func() []mqtt.ShardMark
	epoch prometheus.Counter // new epochs

	mu    sync.RWMutex
	nodes map[uint64]*shareNode
	hist  map[pubsub.SharedKey][]shareEpoch
	every *mqtt.GroupSet // the keys of hist
}

var _ mqtt.SharedDispatch = (*shareDispatch)(nil)

type shareNode struct {
	groups  map[pubsub.SharedKey]bool // → a member is online
	streams int                       // open Pull streams from the node
	live    bool                      // groups came from a stream (or this node), not meta
}

type shareEpoch struct {
	from  map[string]uint64 // shard → its first offset of the epoch (absent: 0)
	nodes []uint64          // sorted; none: no node takes the messages
}

func newShareDispatch(self uint64, marks func() []mqtt.ShardMark, epoch prometheus.Counter) *shareDispatch {
	return &shareDispatch{self: self, marks: marks, epoch: epoch, nodes: map[uint64]*shareNode{}, hist: map[pubsub.SharedKey][]shareEpoch{}}
}

// Takes implements mqtt.SharedDispatch.
func (d *shareDispatch) Takes(group, filter string, pos mqtt.Position, node uint64) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.takes(pubsub.SharedKey{Group: group, Filter: filter}, pos, node)
}

// Mine implements mqtt.SharedDispatch.
func (d *shareDispatch) Mine(topic string, pos mqtt.Position, dst []pubsub.SharedKey) []pubsub.SharedKey {
	d.mu.RLock()
	defer d.mu.RUnlock()
	n := len(dst)
	dst = d.every.Keys(topic, dst)
	kept := slices.DeleteFunc(dst[n:], func(k pubsub.SharedKey) bool { return !d.takes(k, pos, d.self) })
	return dst[:n+len(kept)]
}

// takes is Takes. d.mu is held.
func (d *shareDispatch) takes(k pubsub.SharedKey, pos mqtt.Position, node uint64) bool {
	eps := d.hist[k]
	for i := len(eps) - 1; i >= 0; i-- {
		if pos.Offset >= eps[i].from[pos.Shard] {
			if len(eps[i].nodes) > 0 {
				return pickNode(eps[i].nodes, pos) == node
			}
			break
		}
	}
	// Older than the history (stored before this node started, or
	// before the oldest epoch kept), or stored while no node was known
	// to have a member: every node with a member now takes it. The
	// choice before a restart is not known, and a message the restart's
	// replay does not deliver here again must not be lost; a member
	// whose subscription had not reached this node yet is owed what was
	// published after its SUBACK.
	n := d.nodes[node]
	if n == nil {
		return false
	}
	_, ok := n.groups[k]
	return ok
}

// pickNode picks the node of nodes that takes the message at pos: the
// offsets of a shard go round the nodes in turn, each shard starting at
// a node of its own.
func pickNode(nodes []uint64, pos mqtt.Position) uint64 {
	if len(nodes) == 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(pos.Shard))
	return nodes[(h.Sum64()+pos.Offset)%uint64(len(nodes))]
}

// setGroups records the shared subscriptions with a member on node, as
// node itself (a stream, or this node) says (live) or as its routes in
// meta do; meta's do not replace a live set.
func (d *shareDispatch) setGroups(node uint64, routes []mqtt.SharedRoute, live bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.node(node)
	if !live && n.live {
		return
	}
	n.groups, n.live = make(map[pubsub.SharedKey]bool, len(routes)), live
	for _, r := range routes {
		n.groups[pubsub.SharedKey{Group: r.Group, Filter: r.Filter}] = r.Online
	}
	d.update()
}

// streamOpened counts a Pull stream from peer, which sent routes.
func (d *shareDispatch) streamOpened(peer uint64, routes []mqtt.SharedRoute) {
	d.mu.Lock()
	d.node(peer).streams++
	d.mu.Unlock()
	d.setGroups(peer, routes, true)
}

// streamGroups records the groups a stream from peer sent, while one is
// open.
func (d *shareDispatch) streamGroups(peer uint64, routes []mqtt.SharedRoute) {
	d.mu.RLock()
	open := d.nodes[peer] != nil && d.nodes[peer].streams > 0
	d.mu.RUnlock()
	if open {
		d.setGroups(peer, routes, true)
	}
}

// streamClosed ends one of peer's streams. Without one its groups stay,
// its members unreachable (and may come from meta again).
func (d *shareDispatch) streamClosed(peer uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.node(peer)
	n.streams--
	if n.streams == 0 {
		n.live = false
	}
	d.update()
}

// forgetExcept drops the nodes not in keep (no longer registered) that
// have no stream open.
func (d *shareDispatch) forgetExcept(keep map[uint64]bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	gone := false
	for id, n := range d.nodes {
		if !keep[id] && n.streams == 0 {
			delete(d.nodes, id)
			gone = true
		}
	}
	if gone {
		d.update()
	}
}

// node returns node's entry, creating it. d.mu is held.
func (d *shareDispatch) node(id uint64) *shareNode {
	n := d.nodes[id]
	if n == nil {
		n = &shareNode{}
		d.nodes[id] = n
	}
	return n
}

// all returns every shared subscription the dispatch has chosen nodes
// for.
func (d *shareDispatch) all() *mqtt.GroupSet {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.every
}

// candidatesExcept is candidates less the nodes of except.
func (d *shareDispatch) candidatesExcept(k pubsub.SharedKey, except []uint64) []uint64 {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.candidates(k, except...)
}

// candidates returns the nodes a message of k goes to now (see the type's
// doc), sorted, leaving out except. d.mu is held.
func (d *shareDispatch) candidates(k pubsub.SharedKey, except ...uint64) []uint64 {
	var tiers [3][]uint64
	for id, n := range d.nodes {
		online, ok := n.groups[k]
		if !ok || slices.Contains(except, id) {
			continue
		}
		reachable := id == d.self || n.streams > 0
		switch {
		case reachable && online:
			tiers[0] = append(tiers[0], id)
		case reachable:
			tiers[1] = append(tiers[1], id)
		default:
			tiers[2] = append(tiers[2], id)
		}
	}
	for _, t := range tiers {
		if len(t) > 0 {
			slices.Sort(t)
			return t
		}
	}
	return nil
}

// update starts an epoch for every group whose candidates changed. d.mu
// is held.
func (d *shareDispatch) update() {
	keys := map[pubsub.SharedKey]bool{}
	for k := range d.hist {
		keys[k] = true
	}
	for _, n := range d.nodes {
		for k := range n.groups {
			keys[k] = true
		}
	}
	var from map[string]uint64
	added := false
	for k := range keys {
		nodes := d.candidates(k)
		eps := d.hist[k]
		if len(eps) > 0 && slices.Equal(eps[len(eps)-1].nodes, nodes) {
			continue
		}
		if len(eps) == 0 && len(nodes) == 0 {
			continue
		}
		if from == nil {
			from = map[string]uint64{}
			for _, sm := range d.marks() {
				from[sm.Name] = sm.High
			}
		}
		e := shareEpoch{nodes: nodes, from: from}
		if len(eps) >= shareEpochsKept {
			eps = slices.Delete(eps, 0, 1)
		}
		added = added || len(eps) == 0
		d.hist[k] = append(eps, e)
		if d.epoch != nil {
			d.epoch.Inc()
		}
	}
	if added || d.every == nil {
		routes := make([]mqtt.SharedRoute, 0, len(d.hist))
		for k := range d.hist {
			routes = append(routes, mqtt.SharedRoute{Group: k.Group, Filter: k.Filter})
		}
		d.every = mqtt.NewGroupSet(routes)
	}
}

// joined returns the shared subscriptions of now that were not in before.
func joined(before, now []mqtt.SharedRoute) []mqtt.SharedRoute {
	var out []mqtt.SharedRoute
	for _, r := range now {
		if !slices.ContainsFunc(before, r.Same) {
			out = append(out, r)
		}
	}
	return out
}

// highs is the high watermark of each shard of marks.
func highs(marks []mqtt.ShardMark) map[string]uint64 {
	out := make(map[string]uint64, len(marks))
	for _, sm := range marks {
		out[sm.Name] = sm.High
	}
	return out
}

// replayJoined delivers, in the background, the messages published here
// from since (the shards' high watermarks before the subscriptions were
// made) to the shared subscriptions that just got their first member here,
// where the dispatch gives them to this node: those published after a
// member's SUBACK and before its subscription reached the dispatch went to
// no node (this node's own routes follow its tree a moment later). At
// least once: a message of the range that another node with a member
// takes as well (stored while no node was known to have one) comes twice.
func (c *mqttCluster) replayJoined(since map[string]uint64, groups []mqtt.SharedRoute) {
	if len(groups) == 0 {
		return
	}
	until := highs(c.src.Shards())
	c.smu.Lock()
	defer c.smu.Unlock()
	if c.ctx.Err() != nil {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		takes := func(group, filter string, pos mqtt.Position) bool { return c.share.Takes(group, filter, pos, c.self) }
		if _, err := c.srv.ReplayShared(c.ctx, since, until, groups, takes); err != nil && c.ctx.Err() == nil {
			c.log.Warn("MQTT routing: delivering again to new shared subscriptions the messages published since their SUBACK", "err", err)
		}
	}()
}

// sharedRoutesOf converts the groups of a Pull request.
func sharedRoutesOf(gs []*mqttclusterv1.SharedGroup) []mqtt.SharedRoute {
	out := make([]mqtt.SharedRoute, len(gs))
	for i, g := range gs {
		out[i] = mqtt.SharedRoute{Group: g.Group, Filter: g.Filter, Online: g.Online}
	}
	return out
}

// protoGroups is routes in a Pull request.
func protoGroups(routes []mqtt.SharedRoute) []*mqttclusterv1.SharedGroup {
	out := make([]*mqttclusterv1.SharedGroup, len(routes))
	for i, r := range routes {
		out[i] = &mqttclusterv1.SharedGroup{Group: r.Group, Filter: r.Filter, Online: r.Online}
	}
	return out
}

// ---- orphans ----

// redirects holds the orphans (mqtt.Orphan: messages published here that
// the node chosen for a group cannot deliver, its members gone) on their
// way to the node chosen instead, and the nodes each was tried on.
type redirects struct {
	mu    sync.Mutex
	queue map[uint64][]mqtt.Orphan              // peer → orphans its stream sends next
	wakes map[uint64]map[chan struct{}]struct{} // peer → its open streams' wake channels
	tried map[mqtt.Orphan][]uint64
	order []mqtt.Orphan // of tried, oldest first
}

// redirectsTried bounds how many orphans the nodes tried are kept for.
const redirectsTried = 4096

// orphaned chooses another node for o, which node from could not deliver
// (it has no member of the group), among the nodes with a member that
// were not tried yet: this one delivers it at once, a peer's stream sends
// it next (for that group only). With none left it is dropped: no node
// has a member of the group.
func (c *mqttCluster) orphaned(from uint64, o mqtt.Orphan) {
	r := &c.redirect
	r.mu.Lock()
	if _, ok := r.tried[o]; !ok {
		r.order = append(r.order, o)
		if len(r.order) > redirectsTried {
			delete(r.tried, r.order[0])
			r.order = r.order[1:]
		}
	}
	tried := append(slices.Clone(r.tried[o]), from)
	r.tried[o] = tried
	r.mu.Unlock()
	nodes := c.share.candidatesExcept(pubsub.SharedKey{Group: o.Group, Filter: o.Filter}, tried)
	if len(nodes) == 0 {
		c.m.unroutable.Inc()
		c.log.Debug("MQTT routing: a shared subscription's message has no node with a member left; dropped",
			"group", o.Group, "filter", o.Filter, "shard", o.Pos.Shard, "offset", o.Pos.Offset, "tried", tried)
		return
	}
	to := pickNode(nodes, o.Pos)
	c.m.redirected.Inc()
	if to == c.self {
		ok, err := c.srv.DeliverShared(c.ctx, o.Pos, o.Group, o.Filter)
		if err != nil {
			c.log.Warn("MQTT routing: delivering a shared subscription's message here instead", "group", o.Group, "filter", o.Filter,
				"shard", o.Pos.Shard, "offset", o.Pos.Offset, "err", err)
			return
		}
		if !ok {
			c.orphaned(c.self, o)
		}
		return
	}
	r.mu.Lock()
	r.queue[to] = append(r.queue[to], o)
	for w := range r.wakes[to] {
		select {
		case w <- struct{}{}:
		default:
		}
	}
	r.mu.Unlock()
}

// pullerOrphans bounds the orphans waiting for a peer's stream to send
// them back.
const pullerOrphans = 256

// handBack takes a message the last member here of a shared subscription
// held when its session ended (mqtt.Server.SetSharedDispatch): this
// node's own chooses another node here, a peer's goes back to the peer
// through this node's stream from it.
func (c *mqttCluster) handBack(origin uint64, o mqtt.Orphan) {
	if origin == 0 || origin == c.self {
		c.orphaned(c.self, o)
		return
	}
	c.pmu.Lock()
	p := c.pullers[origin]
	c.pmu.Unlock()
	if p != nil {
		select {
		case p.orphans <- []mqtt.Orphan{o}:
			return
		default:
		}
	}
	c.m.unroutable.Inc()
	c.log.Warn("MQTT routing: cannot hand a shared subscription's message back to the node it was published on; dropped",
		"origin", origin, "group", o.Group, "filter", o.Filter, "shard", o.Pos.Shard, "offset", o.Pos.Offset)
}

// attachRedirects registers the wake channel of a stream serving peer.
func (c *mqttCluster) attachRedirects(peer uint64, wake chan struct{}) {
	r := &c.redirect
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.wakes[peer] == nil {
		r.wakes[peer] = map[chan struct{}]struct{}{}
	}
	r.wakes[peer][wake] = struct{}{}
	if len(r.queue[peer]) > 0 {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}

// detachRedirects ends a stream serving peer; when it was the last, the
// orphans waiting for peer go to another node.
func (c *mqttCluster) detachRedirects(peer uint64, wake chan struct{}) {
	r := &c.redirect
	r.mu.Lock()
	delete(r.wakes[peer], wake)
	var left []mqtt.Orphan
	if len(r.wakes[peer]) == 0 {
		left = r.queue[peer]
		delete(r.queue, peer)
	}
	r.mu.Unlock()
	for _, o := range left {
		c.orphaned(peer, o)
	}
}

// takeRedirects returns the orphans waiting for peer's stream.
func (c *mqttCluster) takeRedirects(peer uint64) []mqtt.Orphan {
	r := &c.redirect
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.queue[peer]
	delete(r.queue, peer)
	return out
}

// sendRedirects sends peer the orphans chosen for it (os), each for its
// group only, with its cursors at pos (unchanged). An orphan of a shard
// the stream has not reached yet waits for the next round.
func (c *mqttCluster) sendRedirects(ctx context.Context, stream mqttclusterv1.Forwarder_PullServer, peer uint64, pos map[string]uint64, os []mqtt.Orphan, served prometheus.Counter) error {
	byShard := map[string][]shard.Record{}
	for _, o := range os {
		if _, ok := pos[o.Pos.Shard]; !ok {
			c.redirect.mu.Lock()
			c.redirect.queue[peer] = append(c.redirect.queue[peer], o)
			c.redirect.mu.Unlock()
			continue
		}
		r, ok, err := c.src.Redirect(ctx, o.Pos.Shard, o.Pos.Offset, o.Group, o.Filter)
		if err != nil {
			return err
		}
		if ok {
			byShard[o.Pos.Shard] = append(byShard[o.Pos.Shard], r)
		}
	}
	for name, recs := range byShard {
		if err := stream.Send(&mqttclusterv1.PullResponse{Shard: name, Next: pos[name], Records: protoRecords(recs)}); err != nil {
			// Back in the queue: the stream's end hands them to
			// another node (detachRedirects).
			c.redirect.mu.Lock()
			for _, o := range os {
				if _, sent := byShard[o.Pos.Shard]; sent {
					c.redirect.queue[peer] = append(c.redirect.queue[peer], o)
				}
			}
			c.redirect.mu.Unlock()
			return err
		}
		delete(byShard, name)
		served.Add(float64(len(recs)))
	}
	return nil
}

// orphansOf converts the orphans of a Pull request.
func orphansOf(os []*mqttclusterv1.Orphan) []mqtt.Orphan {
	out := make([]mqtt.Orphan, len(os))
	for i, o := range os {
		out[i] = mqtt.Orphan{Pos: mqtt.Position{Shard: o.Shard, Offset: o.Offset}, Group: o.Group, Filter: o.Filter}
	}
	return out
}

// protoOrphans is os in a Pull request.
func protoOrphans(os []mqtt.Orphan) []*mqttclusterv1.Orphan {
	out := make([]*mqttclusterv1.Orphan, len(os))
	for i, o := range os {
		out[i] = &mqttclusterv1.Orphan{Shard: o.Pos.Shard, Offset: o.Pos.Offset, Group: o.Group, Filter: o.Filter}
	}
	return out
}
