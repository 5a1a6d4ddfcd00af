package mqtt

import (
	"sync"

	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
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
