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
//     filter (RouteFilters: the subscription tree's filter set), and
//     records them in meta under /mqtt/routes/<node id> (a low-rate fact,
//     rewritten only when the set changed, at most every 250 ms). A stopped
//     node's routes stay. The set is rebuilt only when the tree reports a
//     change (pubsub.Tree.Version, RoutesChanged), at once.
//   - Pull. Node B opens one stream (mqttcluster.v1.Forwarder/Pull) to each
//     peer A registered in meta, sending its filters (again, at once,
//     whenever they change) and its cursor per shard of A. A scans its open
//     MQTT shards from those cursors (ClusterSource.Scan) and streams the
//     records that match B's filters and originated on A: a record B stored
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
//     message, and queues it for every matching session, exactly as a
//     local publish. Only then does B advance, and later persist, its
//     cursor on A's shard. A crash of B between the two means the batch
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
//
// Order: a topic lives in one shard of A and one of B, and A streams a
// shard in offset order, so the messages of one topic reach B's
// subscribers in the order A stored them. A subscription made on B gets
// the messages other nodes store after its SUBACK, as a local subscriber
// does, though its filter reaches them a network round trip later.
//
// What remains:
//   - The read again starts at B's cursor as it was up to a second before
//     the subscription (Since is taken again every second), which also
//     lags A's writes: a new subscription can also get messages A stored
//     shortly before its SUBACK. A subscription made while B has
//     no stream to A (A down, or B starting) gets A's messages from the
//     stream's start (B's cursors), and on a first contact only new ones.
//     The read again is not persisted: if B crashes before storing what it
//     brought, a subscription made just before the crash misses the
//     messages of that range (B's cursor is already past them).
//   - Shared subscriptions are per node: each node's group gets one copy
//     of a message, not one per cluster.
//   - Retained messages reach B only with a matching filter at the time (a
//     later subscriber on B sees A's retained message only if B stored it
//     then).
//   - On the memory engine, the records of a topic are lost when its node
//     restarts, and with them the ones a peer had not pulled yet: those
//     never reach the peer's subscribers.
//   - Sessions are node-local: a client that reconnects to another node
//     starts a new session there.
//
// Metrics (internal/node): quire_mqtt_cluster_forwarded_messages_total{peer}
// (pulled from peer and stored here), served_messages_total{peer},
// lag_records{peer}, peer_errors_total{peer}, peer_connected{peer}.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

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
// (no HeaderOrigin) and whose topic filters matches, and the offset that
// follows the last record read. A from below the shard's low watermark
// reads from the low one.
func (c *ClusterSource) Scan(ctx context.Context, name string, from uint64, filters *FilterSet, maxRecords, maxBytes int) ([]shard.Record, uint64, error) {
	return c.Rescan(ctx, name, from, math.MaxUint64, filters, nil, maxRecords, maxBytes)
}

// Rescan is Scan for the records below until that filters matches and
// except (nil: none) does not: those a puller whose filters grew from
// except to filters was not sent the first time. It returns no more than
// until.
func (c *ClusterSource) Rescan(ctx context.Context, name string, from, until uint64, filters, except *FilterSet, maxRecords, maxBytes int) ([]shard.Record, uint64, error) {
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
	for i := range recs {
		r := &recs[i]
		if r.Offset >= until {
			break
		}
		next = r.Offset + 1
		if forwarded(r) || !filters.Match(string(r.Key)) || except != nil && except.Match(string(r.Key)) {
			continue
		}
		out = append(out, *r)
	}
	return out, next, nil
}

func forwarded(r *shard.Record) bool {
	for _, h := range r.Headers {
		if h.Key == HeaderOrigin {
			return true
		}
	}
	return false
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

// InjectForwarded stores records published on node origin and forwarded
// here (as EncodeRecord wrote them in origin's shards) in this node's
// shards, each per its topic's rule, in order, with HeaderOrigin so that
// they are never forwarded again, and hands each message to the retained
// store and the matching sessions, as a local publish. Each record is
// decoded once and stored as received (less the headers that mean
// something only on origin), and its topic matched once. A record that is
// not an MQTT message is skipped. It returns how many were stored once
// every message is stored and queued: the caller may then advance its
// cursor. On an error some may be stored already (the caller retries the
// batch: at least once).
func (s *Server) InjectForwarded(ctx context.Context, origin uint64, recs []shard.Record) (int, error) {
	st, ok := s.opts.Storage.(*ShardStorage)
	if !ok {
		return 0, ErrNoClusterStorage
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
		f := forwardedMsg{rec: &recs[i], m: m}
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
		return 0, fmt.Errorf("mqtt: append forwarded messages to %s: %w", pos[i].Shard, err)
	}
	// Handed to the sessions in batch order once all are stored.
	for i, f := range fw {
		if f.m.Retain {
			s.stored(ctx, f.m, pos[i])
			continue
		}
		s.m.published[f.m.QoS].Inc()
		s.deliver(f.m, pos[i], f.subs, nil)
		if s.rs != nil {
			s.rs.Done(pos[i])
		}
	}
	return len(fw), nil
}

// forwardedMsg is a record InjectForwarded received, its message, and the
// subscriptions it matched (a non-retained one).
type forwardedMsg struct {
	rec  *shard.Record
	m    *pubsub.Message
	subs []pubsub.Subscription
}

// stored is the record as this node stores it: with mark (HeaderOrigin),
// without the QoS 2 packet identifier and the delayed-publish stamp, which
// name the publisher's flow and a release on origin and would be taken
// for this node's own (persist.go storedInbound, delayed.go released).
func (f *forwardedMsg) stored(mark shard.Header) shard.Record {
	r := *f.rec
	r.Offset = 0 // the engine assigns it
	r.Headers = make([]shard.Header, 0, len(f.rec.Headers)+1)
	for _, h := range f.rec.Headers {
		if h.Key != HeaderQoS2ID && h.Key != HeaderDelayed && h.Key != HeaderOrigin {
			r.Headers = append(r.Headers, h)
		}
	}
	r.Headers = append(r.Headers, mark)
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
