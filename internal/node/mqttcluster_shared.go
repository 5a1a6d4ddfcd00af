package node

// Shared subscriptions across the cluster, the origin's side: which node
// delivers a message published here to each shared group (the design is
// in frontends/mqtt/doc.go, "Shared subscriptions in a cluster").

import (
	"hash/fnv"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/frontends/mqtt"
	"github.com/quiremq/quire/frontends/pubsub"
	mqttclusterv1 "github.com/quiremq/quire/internal/proto/mqttcluster/v1"
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
	k := pubsub.SharedKey{Group: group, Filter: filter}
	d.mu.RLock()
	defer d.mu.RUnlock()
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

// candidates returns the nodes a message of k goes to now (see the type's
// doc), sorted. d.mu is held.
func (d *shareDispatch) candidates(k pubsub.SharedKey) []uint64 {
	var tiers [3][]uint64
	for id, n := range d.nodes {
		online, ok := n.groups[k]
		if !ok {
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
		d.hist[k] = append(eps, e)
		if d.epoch != nil {
			d.epoch.Inc()
		}
	}
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
