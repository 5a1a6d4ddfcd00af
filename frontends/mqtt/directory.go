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
// the state follows the session: the old owner returns it (handover, a
// protobuf mqttclusterv1.SessionState: subscriptions with their options,
// expiry, every QoS 1 and 2 message it still owes, by value, inflight ones
// with their packet identifiers, and the inbound QoS 2 identifiers
// awaiting PUBREL), and the new node installs it, stores it as it stores
// its own sessions (the inbound identifiers too), answers Session Present
// 1 and delivers what is owed. Messages the old owner owed through a
// shared subscription stay with the group there.
//
// The handover is two-phase: the old owner keeps the state it returned
// (pending, in its store) until the new node, once it stored the session,
// tells it to forget it (ForgetHandover), or for handoverTTL (then it is
// dropped, logged). A Release again from the same node (its reply was
// lost) returns the same state; a node that gets the client back before
// the new node confirmed takes its pending state back.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quiremq/quire/frontends/mqtt/store"
	"github.com/quiremq/quire/frontends/pubsub"
	mqttclusterv1 "github.com/quiremq/quire/internal/proto/mqttcluster/v1"
)

// SessionDirectory tells which node of a cluster owns each MQTT session.
// Its methods must be safe for concurrent use.
type SessionDirectory interface {
	// Claim makes this node the owner of clientID's session before a new
	// connection binds to it, and has the previous owner release it
	// (ReleaseSession there), returning once it did or could not (a node
	// that is down). cleanStart is the new connection's. Without it, the
	// state the previous owner returned is returned, nil if none. done
	// (nil: nothing to call) is called once the CONNECT ends its attach:
	// stored true when the connection is bound to the session and the
	// state returned is installed and stored as this node stores its
	// sessions (the previous owner may forget its copy), false when the
	// CONNECT failed. An error wrapping ErrHandoverIncomplete refuses the
	// CONNECT (the previous owner may still hold state it has not handed
	// over: the client connects again); another is logged and the
	// connection goes on.
	Claim(ctx context.Context, clientID string, cleanStart bool) (state *mqttclusterv1.SessionState, done func(stored bool), err error)
	// Foreign returns those of clientIDs (the sessions restored at Start)
	// that another node owns.
	Foreign(ctx context.Context, clientIDs []string) ([]string, error)
}

// ErrHandoverIncomplete is wrapped by SessionDirectory.Claim's error when
// the previous owner is up but did not answer: it may hold the session's
// state, kept for a retry, so the CONNECT is refused rather than started
// without it.
var ErrHandoverIncomplete = errors.New("mqtt: the session's previous owner has not handed it over yet")

// foreignTimeout bounds SessionDirectory.Foreign at Start.
const foreignTimeout = 5 * time.Second

// handoverFormat is the version of the SessionState layout this node
// writes and reads.
const handoverFormat = 1

// HandoverTTL is how long a node keeps the state of a session it handed
// over when the new owner does not confirm it stored it.
const HandoverTTL = 10 * time.Minute

// claim runs Options.Sessions.Claim for a CONNECT (attach) and returns
// the state to install (nil if none) and the function attach calls when
// it ends (stored: bound, with that state stored). A pending handover of
// this node for clientID (the client came back before the other node
// confirmed) is superseded by what the claim brought, or by Clean Start,
// and otherwise taken back.
func (s *Server) claim(ctx context.Context, clientID string, cleanStart bool) (*mqttclusterv1.SessionState, func(stored bool), error) {
	d := s.opts.Sessions
	if d == nil {
		return nil, func(bool) {}, nil
	}
	// ctx is the CONNECT's (Options.ConnectTimeout): no timer of its own,
	// which a node alone in its cluster would make for nothing.
	state, done, err := d.Claim(ctx, clientID, cleanStart)
	if done == nil {
		done = func(bool) {}
	}
	if errors.Is(err, ErrHandoverIncomplete) {
		return nil, done, err
	}
	if err != nil {
		s.log.Warn("mqtt session claim failed; the connection goes on", "client_id", clientID, "err", err)
	}
	if p := s.pendingHandover(clientID); p != nil {
		if cleanStart || state != nil {
			s.forgetPending(p, "the session was claimed again")
		} else {
			s.log.Info("mqtt session handed over but not confirmed is taken back", "client_id", clientID, "to", p.to)
			state = p.state
			inner := done
			done = func(stored bool) {
				if stored {
					s.forgetPending(p, "taken back")
				}
				inner(stored)
			}
		}
	}
	if cleanStart {
		return nil, done, nil
	}
	return state, done, nil
}

// Release asks ReleaseSession to give a session up to another node.
type Release struct {
	ClientID string
	// CleanStart is the new connection's: without it the state is
	// returned (and kept until ForgetHandover or HandoverTTL).
	CleanStart bool
	// To is the node taking the session over; Self is this node's id in
	// the cluster, the origin its peers know its messages by
	// (InjectForwarded), so that the other node can tell the messages
	// handed over from the same ones forwarded to it.
	To, Self uint64
	// Frontiers and Cursors are what the session was handed of this
	// node's messages, taken before ReleaseSession (SessionState's).
	Frontiers map[string]uint64
	Cursors   []*mqttclusterv1.PeerCursors
}

// ReleaseSession gives a session up to another node that took it over:
// its connection, if any, is closed as a local takeover closes it (v5:
// DISCONNECT 0x8E; a will without delay is published), then the session
// ends here (its stored record is deleted). Without CleanStart the
// session goes on there: its state is returned (for the other node's
// Claim) and kept, stored before the session's records are deleted, until
// that node confirms (ForgetHandover) or HandoverTTL passes, and a delayed
// will still pending is dropped (the new connection suppresses it, MQTT
// 5.0 §3.1.2.5); with CleanStart nothing is returned and the will is
// published, as a local takeover does. A session already released to r.To
// and not confirmed yet is returned again. It reports whether this server
// held the session (or its pending state).
func (s *Server) ReleaseSession(ctx context.Context, r Release) (state *mqttclusterv1.SessionState, released bool, err error) {
	for {
		s.mu.Lock()
		sess := s.sessions[r.ClientID]
		if sess == nil || s.stopped {
			p := s.pending[r.ClientID]
			if p == nil || s.stopped {
				s.mu.Unlock()
				return nil, false, nil
			}
			if r.CleanStart {
				s.forgetPendingLocked(p, "the new connection has Clean Start")
				s.mu.Unlock()
				return nil, true, nil
			}
			s.mu.Unlock()
			if p.to != r.To {
				return nil, false, nil
			}
			s.log.Info("mqtt session state handed over again (not confirmed yet)", "client_id", r.ClientID, "to", r.To)
			return p.state, true, nil
		}
		if oc := sess.owner(); oc != nil {
			s.mu.Unlock()
			if err := s.takeOver(ctx, oc, "mqtt session taken over by another node", "client_id", r.ClientID, "old_remote", oc.remote); err != nil {
				return nil, false, err
			}
			continue
		}
		if !r.CleanStart {
			sess.dropWill()
			state = sess.handover(r.Self)
			state.Frontiers, state.Cursors = r.Frontiers, r.Cursors
			if err := s.keepPendingLocked(r.ClientID, r.To, state); err != nil {
				s.mu.Unlock()
				return nil, false, err
			}
		}
		s.endSessionLocked(sess)
		s.mu.Unlock()
		return state, true, nil
	}
}

// pendingHandover is the state of a session handed over to node to,
// kept until that node confirms it stored it, or until.
type pendingHandover struct {
	client string
	to     uint64
	state  *mqttclusterv1.SessionState
	until  time.Time
	timer  *time.Timer
}

// keepPendingLocked keeps state, handed to node to, for s.handoverTTL,
// in the store first when sessions are stored. s.mu is held.
func (s *Server) keepPendingLocked(client string, to uint64, state *mqttclusterv1.SessionState) error {
	p := &pendingHandover{client: client, to: to, state: state, until: time.Now().Add(s.handoverTTL)}
	if s.persistent() {
		b, err := proto.Marshal(state)
		if err != nil {
			return err
		}
		if err := s.opts.Store.PutHandover(client, &store.Handover{To: to, Until: p.until.UnixMilli(), State: b}); err != nil {
			s.m.storageErrors.Inc()
			return fmt.Errorf("mqtt: storing the session handed over: %w", err)
		}
	}
	s.armPendingLocked(p)
	return nil
}

// armPendingLocked registers p, replacing the client's previous one, and
// arms its expiry. s.mu is held.
func (s *Server) armPendingLocked(p *pendingHandover) {
	if old := s.pending[p.client]; old != nil {
		old.timer.Stop()
	}
	s.pending[p.client] = p
	p.timer = time.AfterFunc(time.Until(p.until), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.stopped && s.pending[p.client] == p {
			s.log.Warn("mqtt session handed over to another node, which did not confirm it stored it: its state is dropped here",
				"client_id", p.client, "to", p.to, "owed", len(p.state.Owed))
			s.forgetPendingLocked(p, "")
		}
	})
}

// pendingHandover returns clientID's pending handover, nil if none.
func (s *Server) pendingHandover(clientID string) *pendingHandover {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending[clientID]
}

// forgetPending drops p if it is still its client's pending handover.
func (s *Server) forgetPending(p *pendingHandover, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgetPendingLocked(p, why)
}

// forgetPendingLocked is forgetPending with s.mu held; why is logged
// ("": nothing).
func (s *Server) forgetPendingLocked(p *pendingHandover, why string) {
	if s.pending[p.client] != p {
		return
	}
	delete(s.pending, p.client)
	p.timer.Stop()
	if why != "" {
		s.log.Debug("mqtt session state kept for another node dropped", "client_id", p.client, "to", p.to, "why", why)
	}
	if s.persistent() {
		if err := s.opts.Store.DeleteHandover(p.client); err != nil {
			s.m.storageErrors.Inc()
			s.log.Warn("mqtt session state kept for another node not deleted from the store", "client_id", p.client, "err", err)
		}
	}
}

// ForgetHandover drops the state of clientID's session kept since it was
// handed to node to, which stored it. It reports whether there was one.
func (s *Server) ForgetHandover(clientID string, to uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending[clientID]
	if p == nil || p.to != to {
		return false
	}
	s.forgetPendingLocked(p, "confirmed")
	return true
}

// restorePending loads, at Start, the handovers not confirmed before the
// node stopped; those past their time are dropped.
func (s *Server) restorePending() error {
	var expired []string
	err := s.opts.Store.Handovers(func(client string, h *store.Handover) error {
		until := time.UnixMilli(h.Until)
		var st mqttclusterv1.SessionState
		if err := proto.Unmarshal(h.State, &st); err != nil {
			return fmt.Errorf("%w: handover of %q: %v", store.ErrCorrupt, client, err)
		}
		if time.Now().After(until) {
			s.log.Warn("mqtt session handed over to another node, which did not confirm it stored it: its state is dropped here",
				"client_id", client, "to", h.To, "owed", len(st.Owed))
			expired = append(expired, client)
			return nil
		}
		s.mu.Lock()
		s.armPendingLocked(&pendingHandover{client: client, to: h.To, state: &st, until: until})
		s.mu.Unlock()
		return nil
	})
	for _, c := range expired {
		err = errors.Join(err, s.opts.Store.DeleteHandover(c))
	}
	return err
}

// stopPending stops the expiry of the pending handovers (Stop: the next
// Start re-arms the stored ones).
func (s *Server) stopPending() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pending {
		p.timer.Stop()
	}
}

// handover returns sess's state (sess offline, no will); origin is this
// node's id.
func (sess *session) handover(origin uint64) *mqttclusterv1.SessionState {
	rec := sess.record()
	st := &mqttclusterv1.SessionState{Format: handoverFormat, ClientId: sess.id, ProtocolVersion: uint32(rec.Version),
		ExpirySeconds: rec.ExpirySeconds, Origin: origin}
	for _, sub := range rec.Subs {
		st.Subscriptions = append(st.Subscriptions, &mqttclusterv1.Subscription{Filter: sub.Filter, Qos: uint32(sub.QoS), NoLocal: sub.NoLocal,
			RetainAsPublished: sub.RetainAsPublished, RetainHandling: uint32(sub.RetainHandling), Id: sub.ID})
	}
	sess.mu.Lock()
	defer sess.mu.Unlock()
	add := func(d *delivery) {
		if d.qos > 0 && d.sg == nil {
			st.Owed = append(st.Owed, &mqttclusterv1.OwedMessage{Message: messageProto(d.msg), Qos: uint32(d.qos), Retain: d.retain,
				SubscriptionIds: d.subIDs, PacketId: uint32(d.id), Seq: d.seq, Released: d.released,
				Stored: d.pos.Shard != "", OriginOffset: d.pos.Offset})
		}
	}
	inflight := make([]*delivery, 0, len(sess.inflight))
	for _, d := range sess.inflight {
		inflight = append(inflight, d)
	}
	slices.SortFunc(inflight, func(a, b *delivery) int { return cmp.Compare(a.seq, b.seq) })
	for _, d := range inflight {
		add(d)
	}
	for i := range sess.queue {
		add(&sess.queue[i])
	}
	for id := range sess.inQoS2 {
		st.InboundQos2 = append(st.InboundQos2, uint32(id))
	}
	slices.Sort(st.InboundQos2)
	return st
}

// handedCopy is where a message handed over is stored on its origin:
// its topic (one shard per topic) and offset.
type handedCopy struct {
	Topic  string
	Offset uint64
}

// messageProto is m on the wire.
func messageProto(m *pubsub.Message) *mqttclusterv1.Message {
	p := &mqttclusterv1.Message{Topic: m.Topic, Payload: m.Payload, Qos: uint32(m.QoS), Retain: m.Retain,
		PayloadFormat: uint32(m.PayloadFormat), ContentType: m.ContentType, ResponseTopic: m.ResponseTopic,
		CorrelationData: m.CorrelationData, Publisher: m.Publisher}
	for _, h := range m.Headers {
		p.UserProperties = append(p.UserProperties, &mqttclusterv1.Header{Key: h.Key, Value: []byte(h.Value)})
	}
	if !m.Expiry.IsZero() {
		p.ExpiryUnixMs = m.Expiry.UnixMilli()
	}
	if !m.Time.IsZero() {
		p.TimeUnixMs = m.Time.UnixMilli()
	}
	return p
}

// messageFrom is messageProto's inverse (no publisher's packet
// identifier: it names the publisher's flow on the origin).
func messageFrom(p *mqttclusterv1.Message) *pubsub.Message {
	m := &pubsub.Message{Topic: p.Topic, Payload: p.Payload, QoS: byte(p.Qos), Retain: p.Retain, PayloadFormat: byte(p.PayloadFormat),
		ContentType: p.ContentType, ResponseTopic: p.ResponseTopic, CorrelationData: p.CorrelationData, Publisher: p.Publisher}
	for _, h := range p.UserProperties {
		m.Headers = append(m.Headers, pubsub.Header{Key: h.Key, Value: string(h.Value)})
	}
	if p.ExpiryUnixMs != 0 {
		m.Expiry = time.UnixMilli(p.ExpiryUnixMs)
	}
	if p.TimeUnixMs != 0 {
		m.Time = time.UnixMilli(p.TimeUnixMs)
	}
	return m
}

// CheckHandover reports why st cannot be installed as clientID's
// session, nil if it can: another layout version (a node of another
// release), another client, or values out of their range.
func CheckHandover(clientID string, st *mqttclusterv1.SessionState) error {
	switch {
	case st.GetFormat() != handoverFormat:
		return fmt.Errorf("mqtt: session state of format %d, this node reads format %d (the nodes run different versions)", st.GetFormat(), handoverFormat)
	case st.ClientId != clientID:
		return fmt.Errorf("mqtt: session state of client %q, not %q", st.ClientId, clientID)
	case st.ProtocolVersion > 5:
		return fmt.Errorf("mqtt: session state with protocol version %d", st.ProtocolVersion)
	}
	for _, sub := range st.Subscriptions {
		if sub.Qos > 2 || sub.RetainHandling > 2 {
			return fmt.Errorf("mqtt: session state with a subscription of QoS %d, retain handling %d", sub.Qos, sub.RetainHandling)
		}
	}
	for _, o := range st.Owed {
		if o.Message == nil || o.Qos < 1 || o.Qos > 2 || o.PacketId > 0xFFFF {
			return fmt.Errorf("mqtt: session state with an owed message that is not one (QoS %d, packet id %d)", o.Qos, o.PacketId)
		}
	}
	for _, id := range st.InboundQos2 {
		if id == 0 || id > 0xFFFF {
			return fmt.Errorf("mqtt: session state with inbound packet id %d", id)
		}
	}
	return nil
}

// importLocked installs a session handed over by another node (st, as
// ReleaseSession returned it) as clientID's, nil if st cannot be used.
// Its deliveries are kept by value (no position here). s.mu is held.
func (s *Server) importLocked(clientID string, st *mqttclusterv1.SessionState) *session {
	if err := CheckHandover(clientID, st); err != nil {
		s.log.Warn("mqtt session state from another node not usable; starting a new session", "client_id", clientID, "err", err)
		return nil
	}
	rec := &store.Session{ClientID: clientID}
	for _, sub := range st.Subscriptions {
		rec.Subs = append(rec.Subs, store.Sub{Filter: sub.Filter, QoS: byte(sub.Qos), NoLocal: sub.NoLocal,
			RetainAsPublished: sub.RetainAsPublished, RetainHandling: byte(sub.RetainHandling), ID: sub.Id})
	}
	sess := newSession(clientID)
	sess.version = byte(st.ProtocolVersion)
	sess.expiry = time.Duration(st.ExpirySeconds) * time.Second
	if err := s.restoreSubs(sess, rec); err != nil {
		s.log.Warn("mqtt session state from another node not usable; starting a new session", "client_id", clientID, "err", err)
		for f := range sess.subs {
			s.unsubscribe(clientID, f)
		}
		return nil
	}
	var skip []handedCopy
	for _, o := range st.Owed {
		d := &delivery{msg: messageFrom(o.Message), qos: byte(o.Qos), retain: o.Retain, subIDs: o.SubscriptionIds,
			id: uint16(o.PacketId), seq: o.Seq, released: o.Released}
		if _, used := sess.inflight[d.id]; d.id == 0 || used {
			d.id, d.seq, d.released = 0, 0, false
			sess.queue = append(sess.queue, *d)
		} else {
			sess.inflight[d.id] = d
			sess.seq = max(sess.seq, d.seq)
		}
		sess.owe(d)
		if o.Stored {
			skip = append(skip, handedCopy{Topic: d.msg.Topic, Offset: o.OriginOffset})
		}
	}
	for _, id := range st.InboundQos2 {
		sess.inQoS2[uint16(id)] = struct{}{}
	}
	s.sessions[clientID] = sess
	s.handed.add(sess, st.Origin, skip)
	s.log.Info("mqtt session state taken from another node", "client_id", clientID, "from", st.Origin, "subscriptions", len(st.Subscriptions),
		"owed", len(st.Owed), "inbound_qos2", len(st.InboundQos2))
	return sess
}

// storeInbound records the inbound QoS 2 packet identifiers of a session
// handed over here as the node records its own (recordInbound), so that
// a restart of this node still answers a resent PUBLISH with PUBREC and
// does not store it twice. They were stored on the old owner (a position
// of this node does not exist): recorded without one (restoreSession
// keeps them as they are).
func (s *Server) storeInbound(sess *session) error {
	if !s.persistent() || !sess.stored.Load() {
		return nil
	}
	sess.mu.Lock()
	ids := make([]uint16, 0, len(sess.inQoS2))
	for id := range sess.inQoS2 {
		ids = append(ids, id)
	}
	sess.mu.Unlock()
	for _, id := range ids {
		if err := s.opts.Store.PutInbound(sess.id, id, store.Position{}); err != nil {
			s.m.storageErrors.Inc()
			return fmt.Errorf("mqtt: storing the inbound QoS 2 ids handed over: %w", err)
		}
	}
	return nil
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
