package mqtt

// Cross-node routing: the MQTT side of a cluster of Quire nodes.
//
// Every node stores what its own clients publish in its own shards
// ("mqtt/<engine>/<n>", storage.go) and delivers from them to its own
// sessions. A cluster adds pull replication between the nodes (the node's
// side, the gRPC service and the pullers, is internal/node/mqttcluster.go):
//
//   - Routes. Each node keeps the distinct filters of its sessions, online
//     and offline persistent ones, shared subscriptions by their inner
//     filter (RouteFilters: the subscription tree's filter set), and its
//     shared subscriptions (ClusterRoutes), and records them in meta under
//     /mqtt/routes/<node id> (a low-rate fact, rewritten only when the set
//     changed, at most every 250 ms). A stopped node's routes stay. The set
//     is rebuilt only when the tree reports a change (pubsub.Tree.Version,
//     RoutesChanged), at once.
//   - Shared subscriptions: one member in the cluster per message (the
//     origin chooses the node; doc.go, "Shared subscriptions in a
//     cluster", shared.go).
//   - Pull. Node B opens one stream (mqttcluster.v1.Forwarder/Pull) to each
//     peer A registered in meta, sending its filters (again, at once,
//     whenever they change) and its cursor per shard of A. A scans its open
//     MQTT shards from those cursors (ClusterSource.ScanFor) and streams the
//     records that match B's non-shared filters or that A chose B for for
//     one of B's shared subscriptions, and originated on A: a record B stored
//     on behalf of a peer carries HeaderOrigin and is never forwarded
//     again, so there are no loops and each message crosses one hop. A
//     batch that matched nothing still moves B's cursor.
//   - New filters. B's request with a changed set carries Since: B's
//     cursors on A's shards taken before the subscriptions it adds a filter
//     for were made. A reads [Since, where it has streamed) again and
//     streams the records that match an added filter and no previous one
//     (ClusterSource.Rescan), leaving B's cursor where it was. A message
//     stored on A after B's SUBACK is above B's cursor at the subscription,
//     so it is either in that range or read with the new filters: none is
//     missed however late the filters reach A (internal/node
//     refreshRoutes).
//   - Inject. B stores each forwarded record, as received, in its own shard
//     as its topic's rule says, with HeaderOrigin set (InjectForwarded: one
//     append per shard, durable as the engine promises; each record is
//     decoded and its topic matched once), sets or clears the retained
//     message (see Retained messages), and queues it for every matching
//     session, exactly as a local publish. Only then does B advance, and
//     later persist, its cursor on A's shard. A crash of B between the two means the batch
//     comes again: duplicates, never a loss (at least once for QoS 1 and
//     2). A restart of A or B resumes from B's cursors; messages A took
//     while B was down reach B's persistent sessions when B returns.
//   - Backpressure. Before a batch is stored, InjectForwarded waits (up to
//     250 ms) until the online sessions it feeds have room for it in their
//     queues (woken when a writer takes from a queue): a backlog arrives
//     much faster than a client drains it, and would otherwise overflow
//     Options.MaxQueued (tail drop); retained messages are not waited for.
//     A peer that is down is retried with backoff (100 ms to 10 s) and
//     never blocks local traffic; an idle stream carries a heartbeat every
//     5 s and a puller that hears nothing for 30 s reconnects.
//   - First contact. A peer B has no cursor of yet is read from its shards'
//     high watermarks (new messages only), a shard that appears later from
//     its low watermark; a cursor above a shard's high watermark (the shard
//     was lost, as a memory engine's on restart) restarts at its low one.
//   - Retained messages: one set for the cluster, a full copy on every
//     node (the retained store, persisted per node as before), so that a
//     SUBSCRIBE anywhere is answered locally, before its SUBACK, with the
//     usual Retain Handling. A's stream carries every retained message
//     published on A whatever B's filters (Scan; Rescan leaves them out:
//     they were sent), and B stores it in its shard as any forwarded
//     record (so its restart replays it), sets it, and delivers it to the
//     sessions it matches. Two sets of a topic made on two nodes are
//     ordered by version, (accept time in ms as the record keeps it, node
//     of origin) (ClusterRetained, store.Retained): a set replaces the
//     entry only if not older, an origin's own sets in its order (a later
//     one in the same ms wins), and a clear leaves a tombstone with its
//     version, so every node ends with the same winner whatever order the
//     sets reach it in (last writer wins, never a flip back). What a
//     stream does not carry, the retained messages stored before where it
//     starts, comes as a snapshot: when B is fresh, or one of its cursors
//     fell outside a shard's records, A's hello announces one and A sends
//     every entry of its retained store, tombstones and other nodes'
//     entries included (any node's copy serves: the versions decide), once
//     the messages below the stream's start were handed to the store
//     (AwaitDone). B takes the newer entries (ApplyRetained), syncs its
//     store, and only then keeps the hello's cursors: a crash before that
//     takes the snapshot again. The cost is the retained traffic once per
//     node and a snapshot per first contact; a non-retained message costs
//     what it did (a header check in Scan), and nothing goes through meta.
//
// Order: a topic lives in one shard of A and one of B, and A streams a
// shard in offset order, so the messages of one topic reach B's
// subscribers in the order A stored them. A subscription made on B gets
// the messages other nodes store after its SUBACK, as a local subscriber
// does, though its filter reaches them a network round trip later.
//
// What remains (for shared subscriptions, see doc.go, "Shared
// subscriptions in a cluster"):
//   - The read again starts at B's cursor as it was up to a second before
//     the subscription (Since is taken again every second), which also
//     lags A's writes: a new subscription can also get messages A stored
//     shortly before its SUBACK. A subscription made while B has
//     no stream to A (A down, or B starting) gets A's messages from the
//     stream's start (B's cursors), and on a first contact only new ones.
//     The read again is not persisted: if B crashes before storing what it
//     brought, a subscription made just before the crash misses the
//     messages of that range (B's cursor is already past them).
//   - Retained messages: the versions take the nodes' clocks as in step (a
//     set within the clock skew after another on a node whose clock is
//     behind loses), and a set reaches the other nodes a pull later (a
//     subscription made on B meanwhile gets B's previous entry, then the
//     new message live if it matches). A snapshot's entries update the
//     store only (a subscription made before it is not sent them). A
//     tombstone is dropped once recorded store.TombstoneTTL (7 days) ago:
//     a set older than the clear that reaches a node only after that,
//     through a stream that lagged as long, brings the message back there.
//   - On the memory engine, the records of a topic are lost when its node
//     restarts, and with them the ones a peer had not pulled yet: those
//     never reach the peer's subscribers.
//   - A session is taken over across nodes (directory.go: the owner is in
//     meta, the old node closes the connection with 0x8E and ends its
//     copy before the new node's CONNACK, handing its state over without
//     Clean Start as a protobuf SessionState; a node that was down drops,
//     at its start, the sessions another node owns now). The handover is
//     two-phase: the old node keeps the state it returned, stored, until
//     the new node stored the session (inbound QoS 2 ids included) and
//     tells it to forget it; a Release again gets the same state. What is
//     not handed over: the messages owed through shared subscriptions
//     (they stay with the group on the old node, or, with no other member
//     there, go back to their origin, which chooses another node: doc.go,
//     "Shared subscriptions in a cluster"), and, when the old node
//     is down, the whole state (the new node starts the session empty,
//     Session Present 0). An old node that is up but does not answer has
//     the CONNECT refused (ErrHandoverIncomplete) for up to a minute
//     (internal/node handoverPatience), after which the session starts
//     empty there; the state it kept is dropped after HandoverTTL (10
//     minutes, logged), or taken back if the client returns to it first.
//     The record of a Release that did not answer is kept in the new
//     node's memory only: after its restart, or when the client goes to
//     a third node meanwhile, that state is not asked for again (it
//     expires on the old node). A new node that stored the session but
//     could not tell the old one leaves the old one's copy until it
//     expires (storage only: it is not a session there).
//     Messages published on the old node between its release and the
//     new node's route reaching it are delivered when that route's read
//     again covers them (from a Since no lower than what the session was
//     handed, raiseSince in internal/node), the handed-over copies that the
//     old node's stream forwards as well are not queued twice
//     (handedSkips, for a minute), but such a copy stored on the old node
//     on behalf of a third node can come twice (at least once). The
//     copies are stored by value on the new node.
//     Two CONNECTs of one client id racing on two nodes: meta orders
//     their claims, and a Release that reaches a node binding an older
//     claim is answered "retry" until that CONNECT is bound, then takes
//     it over (0x8E): one connection and one copy remain, on the node
//     meta names. With Clean Start, an old node that does not answer
//     keeps its copy (and its connection, if any) until it expires, as
//     does a claim that meta refused (the CONNECT goes on).
//
// Metrics (internal/node): quire_mqtt_cluster_forwarded_messages_total{peer}
// (pulled from peer and stored here), served_messages_total{peer},
// lag_records{peer}, peer_errors_total{peer}, peer_connected{peer},
// retained_snapshot_entries_total{peer} (entries of peer's snapshots newer
// than this node's), shared_epochs_total (changes of the nodes a shared
// subscription's messages published here go to), shared_redirected_total
// and shared_unroutable_total (orphans sent elsewhere, or dropped: doc.go).

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
	"github.com/quiremq/quire/shard"
)

// HeaderOrigin marks a record stored by InjectForwarded: its value is the
// id of the node the message was published on (decimal). Such records are
// not forwarded again. DecodeRecord ignores it (an "mqtt." header it does
// not know).
const HeaderOrigin = "mqtt.origin"

// RouteFilters returns the distinct filters of every session of the
// server, online or offline ("$share/{group}/" removed), sorted.
func (s *Server) RouteFilters() []string {
	fs, _ := s.Routes()
	return fs
}

// Routes returns RouteFilters and their version, which grows with every
// change of the set (pubsub.Tree.Filters: the subscription tree holds
// every session's subscriptions; it is walked, not the sessions).
func (s *Server) Routes() (filters []string, version uint64) {
	fs, v := s.tree.Filters()
	if fs == nil {
		fs = []string{}
	}
	return fs, v
}

// RoutesVersion is the version Routes would return now.
func (s *Server) RoutesVersion() uint64 { return s.tree.Version() }

// RoutesChanged returns a channel closed at the next change of Routes
// (after RoutesVersion). The change is made before the SUBACK or UNSUBACK
// of the subscription that made it is sent.
func (s *Server) RoutesChanged() <-chan struct{} { return s.tree.Changed() }

// FilterSet matches topic names against a set of filters with MQTT's rules
// (a wildcard first level does not match "$…" topics).
type FilterSet struct{ tree *pubsub.Tree }

// NewFilterSet returns the set of filters.
func NewFilterSet(filters []string) *FilterSet {
	t := pubsub.NewTree()
	for _, f := range filters {
		t.Subscribe(pubsub.Subscription{Client: "route", Filter: f})
	}
	return &FilterSet{tree: t}
}

// Match reports whether a filter of the set matches topic.
func (f *FilterSet) Match(topic string) bool {
	var buf [4]pubsub.Subscription
	return len(f.tree.Match(topic, buf[:0], nil)) > 0
}

// ClusterSource reads a server's own MQTT shards for its peers.
type ClusterSource struct{ st *ShardStorage }

// ErrNoClusterStorage is returned when the server's storage is not a
// ShardStorage, the only one whose shards can be forwarded.
var ErrNoClusterStorage = errors.New("mqtt: cross-node routing needs a ShardStorage")

// ClusterSource returns the reader of the server's shards for its peers.
func (s *Server) ClusterSource() (*ClusterSource, error) {
	st, ok := s.opts.Storage.(*ShardStorage)
	if !ok {
		return nil, ErrNoClusterStorage
	}
	return &ClusterSource{st: st}, nil
}

// ShardMark is an open shard and its watermarks.
type ShardMark struct {
	Name      string
	Low, High uint64
}

// Shards returns the open MQTT shards (every existing one after Start
// with a Store: OpenAll), sorted by name.
func (c *ClusterSource) Shards() []ShardMark {
	c.st.mu.RLock()
	out := make([]ShardMark, 0, len(c.st.shards))
	for name, os := range c.st.shards {
		low, high := os.sh.Watermarks()
		out = append(out, ShardMark{Name: name, Low: low, High: high})
	}
	c.st.mu.RUnlock()
	slices.SortFunc(out, func(a, b ShardMark) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Scan reads shard name from offset from (at most maxRecords records or
// about maxBytes) and returns the records that originated on this node
// (no HeaderOrigin) and are retained messages (every peer keeps them,
// whatever its filters) or whose topic filters matches, and the offset
// that follows the last record read. A from below the shard's low
// watermark reads from the low one.
func (c *ClusterSource) Scan(ctx context.Context, name string, from uint64, filters *FilterSet, maxRecords, maxBytes int) ([]shard.Record, uint64, error) {
	return c.scan(ctx, name, from, math.MaxUint64, &PeerRoute{Filters: filters}, nil, maxRecords, maxBytes)
}

// PeerRoute is what a peer subscribes to, for ScanFor.
type PeerRoute struct {
	Peer    uint64
	Filters *FilterSet // its non-shared subscriptions' filters
	// Its shared subscriptions, and the dispatch that chooses, for each
	// of this node's messages, the node that takes it for a group (nil:
	// no shared subscription is routed).
	Groups   *GroupSet
	Dispatch SharedDispatch
	// Every shared subscription of the cluster (nil: Groups), and what
	// to do with a message Dispatch chose the peer for, for a group it
	// has no member of any more (it is not sent for it).
	All    *GroupSet
	Orphan func(Orphan)
}

// groups appends to dst the shared subscriptions of the cluster (All, else
// the peer's) that match topic.
func (r *PeerRoute) groups(topic string, dst []pubsub.Subscription) []pubsub.Subscription {
	if r.All != nil {
		return r.All.match(topic, dst)
	}
	return r.Groups.match(topic, dst)
}

// ScanFor is Scan for a peer's route: a record also goes when Dispatch
// chose the peer for one of its groups that matches, and then carries
// HeaderShare naming them (a copy: the shard's records are not touched).
func (c *ClusterSource) ScanFor(ctx context.Context, name string, from uint64, route *PeerRoute, maxRecords, maxBytes int) ([]shard.Record, uint64, error) {
	return c.scan(ctx, name, from, math.MaxUint64, route, nil, maxRecords, maxBytes)
}

// Rescan is Scan for the records below until that filters matches and
// except (nil: none) does not: those a puller whose filters grew from
// except to filters was not sent the first time (retained messages were:
// Rescan leaves them out). It returns no more than until.
func (c *ClusterSource) Rescan(ctx context.Context, name string, from, until uint64, filters, except *FilterSet, maxRecords, maxBytes int) ([]shard.Record, uint64, error) {
	return c.RescanFor(ctx, name, from, until, &PeerRoute{Filters: filters}, except, maxRecords, maxBytes)
}

// RescanFor is Rescan for a peer's route: it also returns the records
// below until that Dispatch gives the peer for one of route's groups (the
// groups it added), with HeaderShare naming them.
func (c *ClusterSource) RescanFor(ctx context.Context, name string, from, until uint64, route *PeerRoute, except *FilterSet, maxRecords, maxBytes int) ([]shard.Record, uint64, error) {
	if except == nil {
		except = NewFilterSet(nil)
	}
	return c.scan(ctx, name, from, until, route, except, maxRecords, maxBytes)
}

// scan is ScanFor with except nil (retained messages whatever filters),
// else Rescan (no retained message, and no shared subscription: the
// stream sent those the first time).
func (c *ClusterSource) scan(ctx context.Context, name string, from, until uint64, route *PeerRoute, except *FilterSet, maxRecords, maxBytes int) ([]shard.Record, uint64, error) {
	c.st.mu.RLock()
	os := c.st.shards[name]
	c.st.mu.RUnlock()
	if os == nil {
		return nil, from, fmt.Errorf("mqtt: shard %s is not open: %w", name, shard.ErrNotFound)
	}
	low, high := os.sh.Watermarks()
	from, high = max(from, low), min(high, until)
	if from >= high {
		return nil, from, nil
	}
	recs, err := os.sh.Read(ctx, from, shard.Limits{MaxRecords: maxRecords, MaxBytes: maxBytes})
	if err != nil {
		return nil, from, fmt.Errorf("mqtt: read shard %s at %d: %w", name, from, err)
	}
	next := from
	out := recs[:0:0]
	filters := route.Filters
	var subs []pubsub.Subscription
	for i := range recs {
		r := &recs[i]
		if r.Offset >= until {
			break
		}
		next = r.Offset + 1
		fw, retained := recordFlags(r)
		if fw || (except != nil && retained) {
			continue
		}
		var share *shard.Header
		designated := false
		if route.Dispatch != nil {
			if subs = route.groups(string(r.Key), subs[:0]); len(subs) > 0 {
				var h shard.Header
				h, designated = shareHeader(route, Position{Shard: name, Offset: r.Offset}, subs)
				share = &h
			}
		}
		if !designated {
			switch {
			case except == nil && retained:
			case !filters.Match(string(r.Key)), except != nil && except.Match(string(r.Key)):
				continue
			}
		}
		if share != nil {
			cp := *r
			cp.Headers = append(r.Headers[:len(r.Headers):len(r.Headers)], *share)
			if designated && except != nil && except.Match(string(r.Key)) {
				// Sent before for the non-shared subscriptions.
				cp.Headers = append(cp.Headers, shareOnly)
			}
			out = append(out, cp)
			continue
		}
		out = append(out, *r)
	}
	return out, next, nil
}

// Redirect returns the record of shard name at offset as a peer is sent
// it for its shared subscription (group, filter) only (HeaderShare,
// HeaderShareOnly): the node first chosen for it had no member left. ok is
// false when it is not there any more.
func (c *ClusterSource) Redirect(ctx context.Context, name string, offset uint64, group, filter string) (r shard.Record, ok bool, err error) {
	r, ok, err = c.record(ctx, name, offset)
	if ok {
		r.Headers = append(r.Headers[:len(r.Headers):len(r.Headers)],
			shard.Header{Key: HeaderShare, Value: []byte(group + "/" + filter)}, shareOnly)
	}
	return r, ok, err
}

// record returns the record of shard name at offset; ok false when it is
// not there (any more).
func (c *ClusterSource) record(ctx context.Context, name string, offset uint64) (r shard.Record, ok bool, err error) {
	c.st.mu.RLock()
	os := c.st.shards[name]
	c.st.mu.RUnlock()
	if os == nil {
		return r, false, nil
	}
	recs, err := os.sh.Read(ctx, offset, shard.Limits{MaxRecords: 1})
	if err != nil || len(recs) == 0 || recs[0].Offset != offset {
		return r, false, err
	}
	return recs[0], true, nil
}

// recordFlags reports whether r was forwarded here (HeaderOrigin) and
// whether it is a retained message.
func recordFlags(r *shard.Record) (forwarded, retained bool) {
	for _, h := range r.Headers {
		switch h.Key {
		case HeaderOrigin:
			forwarded = true
		case HeaderRetain:
			retained = len(h.Value) == 1 && h.Value[0] == '1'
		}
	}
	return forwarded, retained
}

// recordOrigin is the node a record was published on: its HeaderOrigin;
// ok false for none (this node's own, or the serving peer's).
func recordOrigin(r *shard.Record) (id uint64, ok bool) {
	for _, h := range r.Headers {
		if h.Key == HeaderOrigin {
			id, _ = strconv.ParseUint(string(h.Value), 10, 64)
			return id, true
		}
	}
	return 0, false
}

// AwaitDone waits, up to d, until every shard of marks has handed every
// message below its mark to the retained store and the sessions (its
// frontier reached the mark: ShardStorage.Done). A message is appended
// before its retained message is set, so a shard's high watermark can run
// ahead of the retained store for a moment. It reports whether every
// frontier got there.
func (c *ClusterSource) AwaitDone(ctx context.Context, marks map[string]uint64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		f := c.st.Frontiers()
		behind := false
		for name, mark := range marks {
			if at, ok := f[name]; ok && at < mark {
				behind = true
			}
		}
		if !behind {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// Wait returns when a shard has records at or above its mark in marks, a
// shard not in marks may exist, ctx ends, wake receives, or after d.
func (c *ClusterSource) Wait(ctx context.Context, marks map[string]uint64, d time.Duration, wake <-chan struct{}) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	done := make(chan struct{})
	defer close(done)
	woke := make(chan struct{}, 1)
	unknown := false
	c.st.mu.RLock()
	for name, os := range c.st.shards {
		t, ok := os.sh.(shard.Tailer)
		mark, known := marks[name]
		unknown = unknown || !known
		if !ok || !known {
			continue
		}
		ch := t.Wait(mark)
		go func() {
			select {
			case <-ch:
				select {
				case woke <- struct{}{}:
				default:
				}
			case <-done:
			}
		}()
	}
	c.st.mu.RUnlock()
	if unknown {
		return
	}
	select {
	case <-woke:
	case <-timer.C:
	case <-ctx.Done():
	case <-wake:
	}
}

// InjectForwarded is InjectForwardedFrom without the orphans.
func (s *Server) InjectForwarded(ctx context.Context, origin uint64, recs []shard.Record) (int, error) {
	n, _, err := s.InjectForwardedFrom(ctx, origin, "", recs)
	return n, err
}

// InjectForwardedFrom stores records published on node origin and forwarded
// here (as EncodeRecord wrote them in origin's shards) in this node's
// shards, each per its topic's rule, in order, with HeaderOrigin so that
// they are never forwarded again, and hands each message to the retained
// store and the matching sessions, as a local publish. Each record is
// decoded once and stored as received (less the headers that mean
// something only on origin), and its topic matched once. A record that is
// not an MQTT message is skipped. It returns how many were stored once
// every message is stored and queued: the caller may then advance its
// cursor. On an error some may be stored already (the caller retries the
// batch: at least once). A record of origin's shard originShard that
// HeaderShare gives to a shared subscription with no member here any more
// comes back as an orphan, for origin to choose another node.
func (s *Server) InjectForwardedFrom(ctx context.Context, origin uint64, originShard string, recs []shard.Record) (int, []Orphan, error) {
	st, ok := s.opts.Storage.(*ShardStorage)
	if !ok {
		return 0, nil, ErrNoClusterStorage
	}
	mark := shard.Header{Key: HeaderOrigin, Value: []byte(strconv.FormatUint(origin, 10))}
	fw := make([]forwardedMsg, 0, len(recs))
	for i := range recs {
		m, _, err := decodeRecord(&recs[i])
		if err != nil {
			s.log.Warn("mqtt: skipping a forwarded record that is not an MQTT message", "origin", origin, "offset", recs[i].Offset, "err", err)
			continue
		}
		m.PacketID = 0 // the publisher's id on origin means nothing here
		f := forwardedMsg{rec: &recs[i], m: m, from: originShard + "@" + strconv.FormatUint(recs[i].Offset, 10)}
		if !m.Retain {
			// A retained message is matched once set, as a local
			// publish is: a subscriber between the two gets it from
			// the retained store or live.
			f.subs = s.tree.Match(m.Topic, nil, onlineSub)
		}
		fw = append(fw, f)
	}
	s.awaitRoom(ctx, fw, injectPatience)
	pos, errs := make([]Position, len(fw)), make([]error, len(fw))
	st.appendEach(ctx, len(fw), func(i int) string { return fw[i].m.Topic },
		func(i int) shard.Record { return fw[i].stored(mark) }, pos, errs)
	for i, err := range errs {
		if err == nil {
			continue
		}
		// What was stored is not delivered now (the batch comes again):
		// it must not hold the frontiers back.
		s.m.storageErrors.Inc()
		for k := range pos {
			if errs[k] == nil && s.rs != nil {
				s.rs.Done(pos[k])
			}
		}
		return 0, nil, fmt.Errorf("mqtt: append forwarded messages to %s: %w", pos[i].Shard, err)
	}
	var orphans []Orphan
	// Handed to the sessions in batch order once all are stored.
	for i, f := range fw {
		s.m.published[f.m.QoS].Inc()
		subs := f.subs
		if f.m.Retain {
			// In origin's order (its shard's): a same-version set
			// replaces.
			if _, err := s.setRetained(ctx, f.m, origin, true); err != nil {
				s.log.Warn("mqtt retained store failed", "topic", f.m.Topic, "origin", origin, "err", err)
			}
			subs = s.tree.Match(f.m.Topic, nil, onlineSub)
		}
		s.deliver(f.m, pos[i], subs, both(sharedTaken(f.rec), s.handed.keep(origin, f.m.Topic, f.rec.Offset)))
		if s.rs != nil {
			s.rs.Done(pos[i])
		}
		orphans = s.orphans(orphans, Position{Shard: originShard, Offset: f.rec.Offset}, f.rec)
	}
	return len(fw), orphans, nil
}

// ClusterRetained is a retained store that orders the sets of a topic
// across a cluster (store.Retained): each set carries the node it was
// published on, and the newest version wins on every node, whatever
// order the sets arrive in. Without one (Options.Retained another store),
// a peer's retained message is set as a local one, and there is no
// snapshot for a new peer.
type ClusterRetained interface {
	pubsub.RetainedStore
	// Node is the origin of the messages Set stores (this node's id).
	Node() uint64
	// SetFrom stores m, published on node origin, if it is newer than
	// the topic's entry (or as new, with ordered: m comes in origin's
	// order), and reports whether it did.
	SetFrom(ctx context.Context, m *pubsub.Message, origin uint64, ordered bool) (bool, error)
	// Entries returns every entry, tombstones (empty payload) included.
	Entries() []store.RetainedEntry
	// Sync makes the sets before it durable.
	Sync() error
}

var _ ClusterRetained = (*store.Retained)(nil)

// setRetained sets m, published on node origin (0: this node), as its
// topic's retained message, or clears it, as ClusterRetained.SetFrom.
func (s *Server) setRetained(ctx context.Context, m *pubsub.Message, origin uint64, ordered bool) (bool, error) {
	cr, ok := s.opts.Retained.(ClusterRetained)
	if !ok {
		return true, s.opts.Retained.Set(ctx, m)
	}
	if origin == 0 {
		origin = cr.Node()
	}
	return cr.SetFrom(ctx, m, origin, ordered)
}

// RetainedSnapshot returns every retained entry of this node, tombstones
// included, as records (EncodeRecord, with HeaderOrigin naming the node
// each was published on) for a peer that missed them (ApplyRetained);
// nil without a ClusterRetained.
func (s *Server) RetainedSnapshot() []shard.Record {
	cr, ok := s.opts.Retained.(ClusterRetained)
	if !ok {
		return nil
	}
	es := cr.Entries()
	out := make([]shard.Record, len(es))
	for i, e := range es {
		r := EncodeRecord(e.Msg)
		r.Headers = append(r.Headers, shard.Header{Key: HeaderOrigin, Value: []byte(strconv.FormatUint(e.Origin, 10))})
		out[i] = r
	}
	return out
}

// ApplyRetained sets the entries of peer's RetainedSnapshot that are
// newer than this node's and returns how many it took. They update the
// retained store only: they are not stored in a shard nor delivered (a
// subscription gets them when made). SyncRetained makes them durable.
func (s *Server) ApplyRetained(ctx context.Context, peer uint64, recs []shard.Record) (int, error) {
	n := 0
	for i := range recs {
		r := &recs[i]
		m, _, err := decodeRecord(r)
		if err != nil {
			s.log.Warn("mqtt: skipping a retained entry that is not an MQTT message", "peer", peer, "err", err)
			continue
		}
		m.PacketID = 0
		origin, ok := recordOrigin(r)
		if !ok {
			origin = peer
		}
		took, err := s.setRetained(ctx, m, origin, false)
		if err != nil {
			return n, err
		}
		if took {
			n++
		}
	}
	return n, nil
}

// SyncRetained makes the retained sets made so far durable (they are
// written without fsync).
func (s *Server) SyncRetained() error {
	if cr, ok := s.opts.Retained.(ClusterRetained); ok {
		return cr.Sync()
	}
	return nil
}

// forwardedMsg is a record InjectForwarded received, its message, and the
// subscriptions it matched (a non-retained one).
type forwardedMsg struct {
	rec  *shard.Record
	m    *pubsub.Message
	subs []pubsub.Subscription
	from string // where rec is stored on its origin, "shard@offset"
}

// stored is the record as this node stores it: with mark (HeaderOrigin),
// without the QoS 2 packet identifier and the delayed-publish stamp, which
// name the publisher's flow and a release on origin and would be taken
// for this node's own (persist.go storedInbound, delayed.go released);
// with HeaderShareFrom if it carries HeaderShare.
func (f *forwardedMsg) stored(mark shard.Header) shard.Record {
	r := *f.rec
	r.Offset = 0 // the engine assigns it
	r.Headers = make([]shard.Header, 0, len(f.rec.Headers)+2)
	shared := false
	for _, h := range f.rec.Headers {
		switch h.Key {
		case HeaderQoS2ID, HeaderDelayed, HeaderOrigin, HeaderShareFrom:
			continue
		case HeaderShare:
			shared = true
		}
		r.Headers = append(r.Headers, h)
	}
	r.Headers = append(r.Headers, mark)
	if shared {
		r.Headers = append(r.Headers, shard.Header{Key: HeaderShareFrom, Value: []byte(f.from)})
	}
	return r
}

// injectPatience bounds how long InjectForwarded waits for room in the
// queues of the online sessions it feeds.
const injectPatience = 250 * time.Millisecond

// awaitRoom waits, up to patience, until every online session that one of
// fw's subscriptions feeds has room for all of fw in its queue
// (Options.MaxQueued). A peer's backlog arrives in batches far faster than
// a client drains them; without this wait a burst that a local publisher
// would have spread out overflows the queue (tail drop). A session that
// does not drain at all delays each batch by patience, no more: the others
// go on. The wait ends when the session's writer takes from its queue or
// the session goes offline (session.roomFreed).
func (s *Server) awaitRoom(ctx context.Context, fw []forwardedMsg, patience time.Duration) {
	room := s.opts.MaxQueued - len(fw)
	var sessions map[*session]struct{}
	for _, f := range fw {
		for _, sub := range f.subs {
			if sess := sub.Owner.(*session); sess.online.Load() {
				if sessions == nil {
					sessions = map[*session]struct{}{}
				}
				sessions[sess] = struct{}{}
			}
		}
	}
	if len(sessions) == 0 {
		return
	}
	timer := time.NewTimer(patience)
	defer timer.Stop()
	for sess := range sessions {
		for {
			sess.mu.Lock()
			if len(sess.queue) <= room || !sess.online.Load() {
				sess.mu.Unlock()
				break
			}
			if sess.room == nil {
				sess.room = make(chan struct{})
			}
			freed := sess.room
			sess.mu.Unlock()
			select {
			case <-freed:
			case <-timer.C:
				return
			case <-ctx.Done():
				return
			}
		}
	}
}

// roomFreed wakes the awaitRoom waiting on s: its queue shrank or it went
// offline. s.mu is held.
func (s *session) roomFreed() {
	if s.room != nil {
		close(s.room)
		s.room = nil
	}
}
