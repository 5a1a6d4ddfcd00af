package mqtt

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
	"github.com/quiremq/quire/shard"
)

// This file keeps the positions owed to shared subscriptions ("$share/
// group/filter") and moves their messages between members (package doc,
// "Delivery" and "What survives a restart").
//
// A message goes to one member of the group, but it is the group's: with
// Options.Store, what members hold of it (queued or inflight) is owed to
// the group, not to the member, and the group has cursors in the store as
// a session does (store.GroupKey). A restart replays each group from its
// cursors, through the same choice of a member as a live publish with
// every member offline, so an offline persistent member's share of the
// group's messages is not lost with the node's memory.

// shareGroup is one shared subscription (share name, inner filter) and,
// with Options.Store (tracked), the positions owed through it.
type shareGroup struct {
	group, filter string
	key           string // store.GroupKey
	tracked       bool
	mu            sync.Mutex
	own           owedSet
}

func (g *shareGroup) owe(pos Position) {
	if !g.tracked {
		return
	}
	g.mu.Lock()
	g.own.add(pos)
	g.mu.Unlock()
}

func (g *shareGroup) settle(pos Position) {
	if !g.tracked {
		return
	}
	g.mu.Lock()
	g.own.remove(pos)
	g.mu.Unlock()
}

func (g *shareGroup) cursors(frontiers map[string]uint64, explicit bool) (set map[string]uint64, clear []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.own.cursors(frontiers, explicit)
}

// idle reports whether nothing is owed through g and the store has no
// cursor of it.
func (g *shareGroup) idle() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.own.owed) == 0 && len(g.own.kept) == 0
}

// shareGroup returns the shareGroup of (group, filter), creating it.
// Without a Store (nothing is replayed) it tracks no positions, and is
// forgotten when its last member leaves (Server.unsubscribe); with one,
// dirtyGroups sweeps it.
func (s *Server) shareGroup(group, filter string) *shareGroup {
	k := [2]string{group, filter}
	s.gmu.RLock()
	g := s.groups[k]
	s.gmu.RUnlock()
	if g != nil {
		return g
	}
	s.gmu.Lock()
	defer s.gmu.Unlock()
	if g = s.groups[k]; g == nil {
		g = &shareGroup{group: group, filter: filter, key: store.GroupKey(group, filter), tracked: s.persistent()}
		s.groups[k] = g
	}
	return g
}

// groupSweepEvery is how many cursor flushes pass between two sweeps of
// the groups without a member (dirtyGroups).
const groupSweepEvery = 100

// dirtyGroups returns the groups whose owed positions changed since the
// last flush; every groupSweepEvery calls it also forgets those left with
// no member, nothing owed and no cursor in the store. It runs on the
// cursor flush's goroutine only.
func (s *Server) dirtyGroups() []*shareGroup {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	s.groupFlushes++
	sweep := s.groupFlushes%groupSweepEvery == 0
	var out []*shareGroup
	for k, g := range s.groups {
		if g.own.dirty.Swap(false) {
			out = append(out, g)
			continue
		}
		if sweep && g.idle() && len(s.tree.SharedMembers(k[0], k[1])) == 0 {
			delete(s.groups, k)
		}
	}
	return out
}

// groupKey is the store.GroupKey of the shared subscription d came
// through, "" for none.
func (d *delivery) groupKey() string {
	if d.sg == nil {
		return ""
	}
	return d.sg.key
}

// unsubscribe removes client's subscription to filter (as subscribed,
// "$share/…" included) from the tree and reports whether it was there.
// Without a Store, a shared subscription left without members is
// forgotten (a later delivery through it would make a new one).
func (s *Server) unsubscribe(client, filter string) bool {
	found := s.tree.Unsubscribe(client, filter)
	if group, f, ok := pubsub.ParseShared(filter); ok && group != "" && !s.persistent() && len(s.tree.SharedMembers(group, f)) == 0 {
		s.gmu.Lock()
		delete(s.groups, [2]string{group, f})
		s.gmu.Unlock()
	}
	return found
}

// sharedSubs returns sess's shared subscriptions.
func (sess *session) sharedSubs() []pubsub.Subscription {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	var out []pubsub.Subscription
	for _, sub := range sess.subs {
		if sub.Group != "" {
			out = append(out, sub)
		}
	}
	return out
}

// takeOverShared hands sess, which just came online, what offline members
// of its shared subscriptions hold of the groups' messages (queued, and
// QoS 1 inflight): while no member is online, messages queue at offline
// ones (after a restart, all of them), and the first member to connect
// takes them, not only its own share.
func (s *Server) takeOverShared(sess *session) {
	for _, sub := range sess.sharedSubs() {
		for _, m := range s.tree.SharedMembers(sub.Group, sub.Filter) {
			o := m.Owner.(*session)
			if o == sess || o.online.Load() {
				continue
			}
			s.moveShared(o.takeShared(func(g *shareGroup) bool { return g.group == sub.Group && g.filter == sub.Filter }),
				func(int, delivery) pubsub.Subscription { return sub })
		}
	}
}

// moveShared queues each of taken (shared deliveries taken from a member)
// at the member to(i, d) picks, with that subscription's QoS, and counts
// it in quire_mqtt_shared_redelivered_total.
func (s *Server) moveShared(taken []delivery, to func(int, delivery) pubsub.Subscription) {
	for i, d := range taken {
		sub := to(i, d)
		d.qos = min(d.msg.QoS, sub.QoS)
		if reason := sub.Owner.(*session).enqueue(d, s.opts.MaxQueued); reason != "" {
			s.m.dropped.WithLabelValues(reason).Inc()
			continue
		}
		s.m.redelivered.Inc()
	}
}

// ---- shared subscriptions across a cluster ----
//
// In a cluster (cluster.go) a shared subscription's members may be on
// several nodes, and a message goes to one member in the whole cluster.
// The node a message was published on, its origin, chooses the node that
// delivers it to each group (SharedDispatch, internal/node): it delivers
// it itself only if it chose itself, and streams it to a peer for the
// peer's group only if it chose that peer, naming the peer's groups that
// take it in HeaderShare. The peer delivers a forwarded message to those
// groups only (to its non-shared subscriptions as ever). The policy and
// what happens while membership changes are in the package doc.

// HeaderShare is added to a record a node streams to a peer that has a
// shared subscription matching it: the peer's shared subscriptions that
// take the message, "group/filter" each (a group has no '/'), separated
// by '\n', maybe none. The peer keeps it on the copy it stores. A record
// without it goes to every matching group of the peer (a node without a
// SharedDispatch sent it).
const HeaderShare = "mqtt.share"

// HeaderShareOnly ("1"), with HeaderShare, says the record is for those
// shared subscriptions only: the peer's non-shared ones had it already.
const HeaderShareOnly = "mqtt.share.only"

var shareOnly = shard.Header{Key: HeaderShareOnly, Value: []byte{'1'}}

// SharedDispatch chooses, in a cluster, the node that delivers a message
// published on this node to a shared subscription (group, filter): one
// node per message while the group's membership is stable, the same
// answer for the same position whenever it is asked.
type SharedDispatch interface {
	// Takes reports whether node delivers the message stored at pos (a
	// shard of this node's) to its members of (group, filter).
	Takes(group, filter string, pos Position, node uint64) bool
	// Mine appends to dst the shared subscriptions whose filter matches
	// topic that this node takes the message at pos for (Takes), and
	// returns dst.
	Mine(topic string, pos Position, dst []pubsub.SharedKey) []pubsub.SharedKey
}

// SharedRoute is a shared subscription with a member on this node.
type SharedRoute struct {
	Group, Filter string
	Online        bool // a member has a connection
}

// Same reports whether r and o are the same shared subscription.
func (r SharedRoute) Same(o SharedRoute) bool { return r.Group == o.Group && r.Filter == o.Filter }

// clusterDispatch is a SharedDispatch, this node's id in it, and where
// the orphans of ending sessions go.
type clusterDispatch struct {
	d      SharedDispatch
	self   uint64
	orphan func(origin uint64, o Orphan)
}

// SetSharedDispatch makes the server deliver the messages published here
// to a shared subscription only when d chose this node (self) for them;
// nil delivers every one (a single node). When the last member here of a
// shared subscription ends its session, what it held of the group's
// messages goes to orphan (with origin, the node the message was
// published on, 0 for this one; Pos where it is stored there), instead of
// ending with it.
func (s *Server) SetSharedDispatch(d SharedDispatch, self uint64, orphan func(origin uint64, o Orphan)) {
	if d == nil {
		s.dispatch.Store(nil)
		return
	}
	s.dispatch.Store(&clusterDispatch{d: d, self: self, orphan: orphan})
}

// HeaderShareFrom is added to the copy a node stores of a forwarded
// record that carried HeaderShare: where the record is stored on its
// origin, "shard@offset", for the origin to choose another node if the
// last member here leaves before taking it (handBackShared).
const HeaderShareFrom = "mqtt.share.from"

// handBackShared hands what sess, whose session ends, still holds of its
// shared subscriptions' messages (queued, QoS 1 in flight: no other
// member here took it, there is none) to the dispatch's orphan function,
// for the message's origin to choose another node. Without one it ends
// with sess, as on a single node.
func (s *Server) handBackShared(sess *session) {
	d := s.dispatch.Load()
	if d == nil || d.orphan == nil {
		return
	}
	taken := sess.takeShared(func(*shareGroup) bool { return true })
	if len(taken) == 0 {
		return
	}
	go func() {
		for _, t := range taken {
			if origin, o, ok := s.orphanOf(t); ok {
				d.orphan(origin, o)
			}
		}
	}()
}

// orphanOf is the orphan of delivery t, read back from its record: its
// origin (0: this node) and where it is stored there.
func (s *Server) orphanOf(t delivery) (origin uint64, o Orphan, ok bool) {
	st, isShards := s.opts.Storage.(*ShardStorage)
	if !isShards || t.pos.Shard == "" || t.sg == nil {
		return 0, o, false
	}
	o = Orphan{Pos: t.pos, Group: t.sg.group, Filter: t.sg.filter}
	src := ClusterSource{st: st}
	r, found, err := src.record(s.ctx, t.pos.Shard, t.pos.Offset)
	if err != nil || !found {
		s.log.Warn("mqtt: a shared subscription's message left by its last member here is not stored any more", "shard", t.pos.Shard, "offset", t.pos.Offset, "err", err)
		return 0, o, false
	}
	origin, fwd := recordOrigin(&r)
	if !fwd {
		return 0, o, true
	}
	for _, h := range r.Headers {
		if h.Key == HeaderShareFrom {
			name, off, _ := strings.Cut(string(h.Value), "@")
			n, err := strconv.ParseUint(off, 10, 64)
			if err == nil {
				o.Pos = Position{Shard: name, Offset: n}
				return origin, o, true
			}
		}
	}
	return 0, o, false
}

// deliverStored queues m, published here and stored at pos, for the
// matching subscriptions subs (Server.deliver); in a cluster, for a
// shared subscription only if the dispatch chose this node. A group the
// dispatch chose this node for that has no member here any more (the last
// one left a moment ago, before this node's routes changed) does not
// lose it: it is an orphan, for the dispatch's orphan function to send
// elsewhere.
func (s *Server) deliverStored(m *pubsub.Message, pos Position, subs []pubsub.Subscription) {
	d := s.dispatch.Load()
	if d == nil || pos.Shard == "" {
		s.deliver(m, pos, subs, nil)
		return
	}
	s.deliver(m, pos, subs, func(sub pubsub.Subscription) bool {
		return sub.Group == "" || d.d.Takes(sub.Group, sub.Filter, pos, d.self)
	})
	if d.orphan == nil {
		return
	}
	for _, k := range d.d.Mine(m.Topic, pos, nil) {
		if !slices.ContainsFunc(subs, func(sub pubsub.Subscription) bool { return sub.Group == k.Group && sub.Filter == k.Filter }) {
			d.orphan(0, Orphan{Pos: pos, Group: k.Group, Filter: k.Filter})
		}
	}
}

// ClusterRoutes returns Routes split in two: the distinct filters of the
// non-shared subscriptions of every session (online or offline), sorted,
// and the shared subscriptions with a member on this node, sorted by group
// and filter, each with whether a member is online; and the version of the
// routes (RoutesVersion: it also moves when a shared subscription gets its
// first member here or loses its last).
func (s *Server) ClusterRoutes() (plain []string, groups []SharedRoute, version uint64) {
	plain, keys, v := s.tree.Routes()
	if plain == nil {
		plain = []string{}
	}
	groups = make([]SharedRoute, len(keys))
	for i, k := range keys {
		groups[i] = SharedRoute{Group: k.Group, Filter: k.Filter}
	}
	return plain, s.SharedOnline(groups), v
}

// SharedOnline returns groups with Online as it is now (a connection
// coming or going moves no version).
func (s *Server) SharedOnline(groups []SharedRoute) []SharedRoute {
	out := slices.Clone(groups)
	for i := range out {
		out[i].Online = false
		for _, m := range s.tree.SharedMembers(out[i].Group, out[i].Filter) {
			if onlineSub(m) {
				out[i].Online = true
				break
			}
		}
	}
	return out
}

// GroupSet matches topic names against a peer's shared subscriptions.
// Each (group, filter) is held in the tree as a non-shared subscription of
// client group: a shared one would make every match take the tree's write
// lock for its round-robin, on every record of every peer's stream.
type GroupSet struct {
	tree *pubsub.Tree
	keys map[pubsub.SharedKey]bool
}

// NewGroupSet returns the set of the shared subscriptions routes.
func NewGroupSet(routes []SharedRoute) *GroupSet {
	g := &GroupSet{tree: pubsub.NewTree(), keys: make(map[pubsub.SharedKey]bool, len(routes))}
	for _, r := range routes {
		g.tree.Subscribe(pubsub.Subscription{Client: r.Group, Filter: r.Filter})
		g.keys[pubsub.SharedKey{Group: r.Group, Filter: r.Filter}] = true
	}
	return g
}

// match appends to dst the groups of the set whose filter matches topic
// (one subscription each, Group and Filter set).
func (g *GroupSet) match(topic string, dst []pubsub.Subscription) []pubsub.Subscription {
	if g == nil {
		return dst
	}
	n := len(dst)
	dst = g.tree.Match(topic, dst, nil)
	for i := n; i < len(dst); i++ {
		dst[i] = pubsub.Subscription{Group: dst[i].Client, Filter: dst[i].Filter}
	}
	return dst
}

// has reports whether (group, filter) is in the set.
func (g *GroupSet) has(group, filter string) bool {
	return g != nil && g.keys[pubsub.SharedKey{Group: group, Filter: filter}]
}

// Keys appends to dst the set's (group, filter) pairs matching topic.
func (g *GroupSet) Keys(topic string, dst []pubsub.SharedKey) []pubsub.SharedKey {
	var buf [4]pubsub.Subscription
	for _, sub := range g.match(topic, buf[:0]) {
		dst = append(dst, pubsub.SharedKey{Group: sub.Group, Filter: sub.Filter})
	}
	return dst
}

// Orphan is a message chosen for a node's shared subscription (group,
// filter) that the node has no member of any more; Pos is where it is
// stored on its origin.
type Orphan struct {
	Pos           Position
	Group, Filter string
}

// orphans appends to dst the shared subscriptions that HeaderShare of r,
// stored at pos on its origin, names and that have no member here.
func (s *Server) orphans(dst []Orphan, pos Position, r *shard.Record) []Orphan {
	for _, h := range r.Headers {
		if h.Key != HeaderShare {
			continue
		}
		for rest := h.Value; len(rest) > 0; {
			var line []byte
			line, rest, _ = bytes.Cut(rest, []byte{'\n'})
			g, f, _ := bytes.Cut(line, []byte{'/'})
			if len(s.tree.SharedMembers(string(g), string(f))) == 0 {
				dst = append(dst, Orphan{Pos: pos, Group: string(g), Filter: string(f)})
			}
		}
	}
	return dst
}

// DeliverShared delivers the message stored here at pos to one member of
// the shared subscription (group, filter) here (another node chose this
// one for it instead of a node that had no member left), and reports
// whether one took it.
func (s *Server) DeliverShared(ctx context.Context, pos Position, group, filter string) (bool, error) {
	rs, ok := s.opts.Storage.(ReplayStorage)
	if !ok {
		return false, ErrNoClusterStorage
	}
	ms, err := rs.Read(ctx, pos.Shard, pos.Offset, 1)
	if err != nil {
		return false, err
	}
	if len(ms) == 0 || ms[0].Pos != pos {
		return false, fmt.Errorf("mqtt: no message at %s offset %d", pos.Shard, pos.Offset)
	}
	m := ms[0].Msg
	m.PacketID = 0
	n := s.deliver(m, pos, s.tree.Match(m.Topic, nil, onlineSub), func(sub pubsub.Subscription) bool {
		return sub.Group == group && sub.Filter == filter
	})
	if n > 0 {
		s.m.redelivered.Inc()
	}
	return n > 0, nil
}

// ReplayShared delivers again the messages published here (not forwarded)
// in [from, until) of each shard of until to this node's members of the
// shared subscriptions joined (which just got their first member here)
// that takes accepts for them, and returns how many deliveries it queued.
// Messages published after such a member's SUBACK and before the
// dispatch knew of it were given to no node: they reach it this way.
func (s *Server) ReplayShared(ctx context.Context, from, until map[string]uint64, joined []SharedRoute, takes func(group, filter string, pos Position) bool) (int, error) {
	rs, ok := s.opts.Storage.(ReplayStorage)
	if !ok {
		return 0, ErrNoClusterStorage
	}
	n := 0
	for name, end := range until {
		for off := from[name]; off < end; {
			batch, err := rs.Read(ctx, name, off, 512)
			if err != nil {
				return n, err
			}
			if len(batch) == 0 {
				break
			}
			for _, m := range batch {
				off = m.Pos.Offset + 1
				if m.Pos.Offset >= end || m.Origin != 0 {
					continue
				}
				m.Msg.PacketID = 0
				n += s.deliver(m.Msg, m.Pos, s.tree.Match(m.Msg.Topic, nil, onlineSub), func(sub pubsub.Subscription) bool {
					return sub.Group != "" && slices.ContainsFunc(joined, SharedRoute{Group: sub.Group, Filter: sub.Filter}.Same) &&
						takes(sub.Group, sub.Filter, m.Pos)
				})
			}
		}
	}
	return n, nil
}

// shareHeader is HeaderShare naming the groups of subs that route's
// dispatch chose its peer for, for the message at pos; ok false for none.
// A group chosen that the peer has no member of (with route.All) goes to
// route.Orphan.
func shareHeader(route *PeerRoute, pos Position, subs []pubsub.Subscription) (h shard.Header, ok bool) {
	b := []byte{} // present, if empty
	for _, sub := range subs {
		if !route.Dispatch.Takes(sub.Group, sub.Filter, pos, route.Peer) {
			continue
		}
		if route.All != nil && !route.Groups.has(sub.Group, sub.Filter) {
			if route.Orphan != nil {
				route.Orphan(Orphan{Pos: pos, Group: sub.Group, Filter: sub.Filter})
			}
			continue
		}
		if len(b) > 0 {
			b = append(b, '\n')
		}
		b = append(b, sub.Group...)
		b = append(b, '/')
		b = append(b, sub.Filter...)
	}
	return shard.Header{Key: HeaderShare, Value: b}, len(b) > 0
}

// sharedTaken returns the keep function of the delivery of a forwarded
// record r: its shared subscriptions are those HeaderShare names (all
// without it), its non-shared ones all, none with HeaderShareOnly; nil for
// all of them.
func sharedTaken(r *shard.Record) func(pubsub.Subscription) bool {
	var names []byte
	only, named := false, false
	for _, h := range r.Headers {
		switch h.Key {
		case HeaderShare:
			names, named = h.Value, true
		case HeaderShareOnly:
			only = true
		}
	}
	if !named && !only {
		return nil
	}
	return func(sub pubsub.Subscription) bool {
		if sub.Group == "" || !named {
			return sub.Group != "" || !only
		}
		for rest := names; len(rest) > 0; {
			var line []byte
			line, rest, _ = bytes.Cut(rest, []byte{'\n'})
			g, f, _ := bytes.Cut(line, []byte{'/'})
			if string(g) == sub.Group && string(f) == sub.Filter {
				return true
			}
		}
		return false
	}
}

// both is the keep function that accepts what a and b (nil: everything)
// accept.
func both(a, b func(pubsub.Subscription) bool) func(pubsub.Subscription) bool {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return func(sub pubsub.Subscription) bool { return a(sub) && b(sub) }
}
