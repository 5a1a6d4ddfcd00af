package mqtt

// Session takeover across the nodes of a cluster (issue #6). A session is
// owned by one node; which one is a low-rate fact that the cluster keeps
// (internal/node keeps it in meta), while the session's state stays on the
// node. A CONNECT accepted here for a client id that another node owns
// claims the session first (SessionDirectory.Claim, called by attach): the
// old owner closes the client's connection exactly as a local takeover
// does (v5: DISCONNECT 0x8E Session taken over) and ends its copy of the
// session (ReleaseSession), so that it stops queuing messages for it. A
// node that was down meanwhile drops, at Start, the restored sessions that
// another node owns now (SessionDirectory.Foreign). Without Clean Start
// the state follows the session: the old owner returns it (handover:
// subscriptions with their options, expiry, every QoS 1 and 2 message it
// still owes, by value, inflight ones with their packet identifiers, and
// the inbound QoS 2 identifiers awaiting PUBREL), and the new node installs
// it, answers Session Present 1 and delivers what is owed. Messages the old
// owner owed through a shared subscription stay with the group there.

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
)

// SessionDirectory tells which node of a cluster owns each MQTT session.
// Its methods must be safe for concurrent use.
type SessionDirectory interface {
	// Claim makes this node the owner of clientID's session before a new
	// connection binds to it, and has the previous owner release it
	// (ReleaseSession there), returning once it did or could not (a node
	// that is down, or does not answer in time). cleanStart is the new
	// connection's. Without it, the state the previous owner returned
	// (ReleaseSession's) is returned, nil if none. An error is logged and
	// the connection goes on.
	Claim(ctx context.Context, clientID string, cleanStart bool) (state []byte, err error)
	// Foreign returns those of clientIDs (the sessions restored at Start)
	// that another node owns.
	Foreign(ctx context.Context, clientIDs []string) ([]string, error)
}

// foreignTimeout bounds SessionDirectory.Foreign at Start.
const foreignTimeout = 5 * time.Second

// claim runs Options.Sessions.Claim for a CONNECT (attach) and returns
// the state handed over, nil if none.
func (s *Server) claim(ctx context.Context, clientID string, cleanStart bool) []byte {
	d := s.opts.Sessions
	if d == nil {
		return nil
	}
	// ctx is the CONNECT's (Options.ConnectTimeout): no timer of its own,
	// which a node alone in its cluster would make for nothing.
	state, err := d.Claim(ctx, clientID, cleanStart)
	if err != nil {
		s.log.Warn("mqtt session claim failed; the connection goes on", "client_id", clientID, "err", err)
	}
	if cleanStart {
		return nil
	}
	return state
}

// ReleaseSession gives clientID's session up to another node that took it
// over: its connection, if any, is closed as a local takeover closes it
// (v5: DISCONNECT 0x8E; a will without delay is published), then the
// session ends here (its stored record is deleted). Without cleanStart the
// session goes on there: its state is returned (for the other node's
// Claim) and a delayed will still pending is dropped (the new connection
// suppresses it, MQTT 5.0 §3.1.2.5); with cleanStart nothing is returned
// and the will is published, as a local takeover does. It reports whether
// this server held the session.
//
// self is this node's id in the cluster: the origin its peers know its
// messages by (InjectForwarded), so that the other node can tell the
// messages handed over from the same ones forwarded to it.
func (s *Server) ReleaseSession(ctx context.Context, clientID string, cleanStart bool, self uint64) (state []byte, released bool, err error) {
	for {
		s.mu.Lock()
		sess := s.sessions[clientID]
		if sess == nil || s.stopped {
			s.mu.Unlock()
			return nil, false, nil
		}
		if oc := sess.owner(); oc != nil {
			s.mu.Unlock()
			if err := s.takeOver(ctx, oc, "mqtt session taken over by another node", "client_id", clientID, "old_remote", oc.remote); err != nil {
				return nil, false, err
			}
			continue
		}
		if !cleanStart {
			sess.dropWill()
			state, err = json.Marshal(sess.handover(self))
			if err != nil {
				s.mu.Unlock()
				return nil, false, err
			}
		}
		s.endSessionLocked(sess)
		s.mu.Unlock()
		return state, true, nil
	}
}

// handover is a session's state as ReleaseSession returns it.
type handover struct {
	// Session is as stored (persist.go), with every QoS 1 and 2 delivery
	// owed through a non-shared subscription among Copies, positions or
	// not: inflight ones (ID set) in send order, then the queued ones.
	Session *store.Session `json:"session"`
	// Inbound are the inbound QoS 2 packet identifiers awaiting PUBREL.
	Inbound []uint16 `json:"inbound,omitempty"`
	// Origin is the node that handed the session over, and Skip where
	// the copies that it stored itself are in its shards: forwarded to
	// the new node as well (its route for the session's filters reads
	// again what was published shortly before), they are not queued for
	// the session a second time (handedSkips).
	Origin uint64       `json:"origin,omitempty"`
	Skip   []handedCopy `json:"skip,omitempty"`
}

// handedCopy is where a copy of a handover is stored on its origin: its
// topic (one shard per topic) and offset.
type handedCopy struct {
	Topic  string `json:"t"`
	Offset uint64 `json:"o"`
}

// handover returns sess's state (sess offline, no will); origin is this
// node's id.
func (sess *session) handover(origin uint64) *handover {
	h := &handover{Session: sess.record(), Origin: origin}
	h.Session.Will, h.Session.WillDue = nil, 0
	sess.mu.Lock()
	defer sess.mu.Unlock()
	var cs []store.Copy
	add := func(d *delivery) {
		if d.qos > 0 && d.sg == nil {
			cs = append(cs, store.Copy{Msg: d.msg, QoS: d.qos, Retain: d.retain, SubIDs: d.subIDs, ID: d.id, Seq: d.seq, Released: d.released})
			if d.pos.Shard != "" {
				h.Skip = append(h.Skip, handedCopy{Topic: d.msg.Topic, Offset: d.pos.Offset})
			}
		}
	}
	for _, d := range sess.inflight {
		add(d)
	}
	slices.SortFunc(cs, func(a, b store.Copy) int { return cmp.Compare(a.Seq, b.Seq) })
	for i := range sess.queue {
		add(&sess.queue[i])
	}
	h.Session.Copies = cs
	for id := range sess.inQoS2 {
		h.Inbound = append(h.Inbound, id)
	}
	slices.Sort(h.Inbound)
	return h
}

// importLocked installs a session handed over by another node (state, as
// ReleaseSession returned it) as clientID's, nil if state cannot be
// decoded. Its deliveries are kept by value (no position here). s.mu is
// held.
func (s *Server) importLocked(clientID string, state []byte) *session {
	var h handover
	if err := json.Unmarshal(state, &h); err != nil || h.Session == nil || h.Session.ClientID != clientID {
		s.log.Warn("mqtt session state from another node not usable; starting a new session", "client_id", clientID, "err", err)
		return nil
	}
	rec := h.Session
	sess := newSession(clientID)
	sess.version = rec.Version
	sess.expiry = time.Duration(rec.ExpirySeconds) * time.Second
	if err := s.restoreSubs(sess, rec); err != nil {
		s.log.Warn("mqtt session state from another node not usable; starting a new session", "client_id", clientID, "err", err)
		for f := range sess.subs {
			s.unsubscribe(clientID, f)
		}
		return nil
	}
	for _, c := range rec.Copies {
		d := &delivery{msg: c.Msg, qos: c.QoS, retain: c.Retain, subIDs: c.SubIDs, id: c.ID, seq: c.Seq, released: c.Released}
		if _, used := sess.inflight[c.ID]; c.ID == 0 || used {
			d.id, d.seq, d.released = 0, 0, false
			sess.queue = append(sess.queue, *d)
		} else {
			sess.inflight[d.id] = d
			sess.seq = max(sess.seq, d.seq)
		}
		sess.owe(d)
	}
	for _, id := range h.Inbound {
		sess.inQoS2[id] = struct{}{}
	}
	s.sessions[clientID] = sess
	s.handed.add(sess, h.Origin, h.Skip)
	s.log.Info("mqtt session state taken from another node", "client_id", clientID, "subscriptions", len(rec.Subs),
		"owed", len(rec.Copies), "inbound_qos2", len(h.Inbound))
	return sess
}

// dropForeign ends, at Start, the restored sessions that another node took
// over while this one was down. Their pending wills are dropped: the owner
// has the session now.
func (s *Server) dropForeign(ctx context.Context) {
	d := s.opts.Sessions
	if d == nil {
		return
	}
	s.mu.Lock()
	ids := make([]string, 0, len(s.sessions))
	for id := range s.sessions {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, foreignTimeout)
	defer cancel()
	foreign, err := d.Foreign(ctx, ids)
	if err != nil {
		s.log.Warn("mqtt: cannot tell which restored sessions other nodes own; keeping them", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range foreign {
		if sess := s.sessions[id]; sess != nil && sess.owner() == nil {
			s.log.Info("mqtt restored session dropped: another node owns it", "client_id", id)
			sess.dropWill()
			s.endSessionLocked(sess)
		}
	}
}

// dropWill cancels a delayed will still pending.
func (s *session) dropWill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.willTimer != nil {
		s.willTimer.Stop()
		s.willTimer = nil
	}
	s.will, s.willDue = nil, time.Time{}
}

// SessionDirectory returns Options.Sessions.
func (s *Server) SessionDirectory() SessionDirectory { return s.opts.Sessions }

// Frontiers returns, for every open shard, the offset below which every
// message was handed to every matching session.
func (c *ClusterSource) Frontiers() map[string]uint64 { return c.st.Frontiers() }

// handedTTL is how long the copies of a handover are told apart from
// the same messages forwarded afterwards.
const handedTTL = time.Minute

// handedSkips are the messages of sessions handed over to this node that
// their origin may forward here as well (InjectForwarded): the session
// got them by value, not again.
type handedSkips struct {
	n  atomic.Int64 // entries in m: InjectForwarded looks only when > 0
	mu sync.Mutex
	m  map[handedKey]*session
}

type handedKey struct {
	origin uint64
	topic  string
	offset uint64
}

// add registers the copies of sess's handover for handedTTL.
func (h *handedSkips) add(sess *session, origin uint64, skip []handedCopy) {
	if origin == 0 || len(skip) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[handedKey]*session{}
	}
	for _, c := range skip {
		k := handedKey{origin, c.Topic, c.Offset}
		if _, ok := h.m[k]; !ok {
			h.n.Add(1)
		}
		h.m[k] = sess
	}
	time.AfterFunc(handedTTL, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, c := range skip {
			k := handedKey{origin, c.Topic, c.Offset}
			if h.m[k] == sess {
				delete(h.m, k)
				h.n.Add(-1)
			}
		}
	})
}

// keep returns, for a message stored on origin at offset and forwarded
// here, a filter that leaves out the session it was handed over to (nil:
// none was).
func (h *handedSkips) keep(origin uint64, topic string, offset uint64) func(pubsub.Subscription) bool {
	if h.n.Load() == 0 {
		return nil
	}
	k := handedKey{origin, topic, offset}
	h.mu.Lock()
	sess, ok := h.m[k]
	if ok {
		delete(h.m, k)
		h.n.Add(-1)
	}
	h.mu.Unlock()
	if !ok {
		return nil
	}
	return func(sub pubsub.Subscription) bool { return sub.Owner != sess }
}
