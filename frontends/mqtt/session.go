package mqtt

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quiremq/quire/frontends/pubsub"
)

// delivery is one message on its way to one session.
type delivery struct {
	msg    *pubsub.Message
	qos    byte
	retain bool
	subIDs []uint32
	pos    Position    // where msg is stored; Shard "" for an untracked message (retained)
	sg     *shareGroup // the shared subscription it came through, nil if none (shared.go)

	// Set once sent with QoS 1 or 2:
	id       uint16
	seq      uint64 // send order, for resending in order
	released bool   // QoS 2: PUBREC received, PUBREL sent
}

// session is the state of one client identifier: its subscriptions, its
// queue of messages not yet sent, and its inflight messages (sent with QoS
// 1 or 2, not yet acknowledged). It outlives connections up to its expiry.
// With Options.Store, a persistent session is also stored (see persist.go
// and the package doc); owed then tracks the positions it is owed.
type session struct {
	writer atomic.Pointer[conn] // the connection whose writer wake starts (conn.startWriter)
	id     string
	online atomic.Bool
	notify chan struct{} // capacity 1: wakes the connection's writer

	mu          sync.Mutex
	conn        *conn
	ended       bool
	subs        map[string]pubsub.Subscription // by filter as subscribed ("$share/…" included)
	queue       []delivery
	room        chan struct{} // closed when the queue shrinks or the session goes offline (cluster.go, roomFreed); nil unless awaited
	inflight    map[uint16]*delivery
	seq         uint64
	nextID      uint16
	inQoS2      map[uint16]struct{} // inbound QoS 2 ids awaiting PUBREL
	expiry      time.Duration
	expiryTimer *time.Timer
	will        *pubsub.Message // a delayed will, published when willTimer fires or the session ends
	willTimer   *time.Timer
	binds       uint64 // connections bound so far (bind)
	willDue     time.Time

	// Persistence (Options.Store).
	version      byte        // protocol version of the last connection
	offlineSince time.Time   // zero while a connection holds the session
	stored       atomic.Bool // the session has a record in the store
	own          owedSet     // positions owed through non-shared subscriptions
	copied       atomic.Bool // a copy (QoS > 0, no position) was owed or settled since the record was written
}

func newSession(id string) *session {
	return &session{id: id, notify: make(chan struct{}, 1), subs: map[string]pubsub.Subscription{},
		inflight: map[uint16]*delivery{}, inQoS2: map[uint16]struct{}{}}
}

// owedSet is the positions owed to one owner, a session or a shared
// subscription (shareGroup), from which its cursors are computed, and the
// shards the store holds a cursor of it for. Its owner's lock guards it.
type owedSet struct {
	owed  map[string]map[uint64]uint16 // shard → offset → deliveries queued or inflight
	kept  map[string]bool              // shards with a cursor in the store
	dirty atomic.Bool                  // owed changed since the last cursor flush
}

func (o *owedSet) add(pos Position) {
	if o.owed == nil {
		o.owed = map[string]map[uint64]uint16{}
	}
	m := o.owed[pos.Shard]
	if m == nil {
		m = map[uint64]uint16{}
		o.owed[pos.Shard] = m
	}
	m[pos.Offset]++
	o.dirty.Store(true)
}

func (o *owedSet) remove(pos Position) {
	m := o.owed[pos.Shard]
	if m == nil {
		return
	}
	if m[pos.Offset] <= 1 {
		delete(m, pos.Offset)
		if len(m) == 0 {
			delete(o.owed, pos.Shard)
		}
	} else {
		m[pos.Offset]--
	}
	o.dirty.Store(true)
}

// cursors returns, for each shard of frontiers, the offset below which
// nothing is owed: the lowest owed offset, capped by the frontier. A shard
// with nothing owed is left out when explicit is false (its cursor is the
// global one, which the same batch sets to the frontier) and returned in
// clear if the store has a cursor for it; with explicit it is set to the
// frontier. The store is assumed to hold what is returned.
func (o *owedSet) cursors(frontiers map[string]uint64, explicit bool) (set map[string]uint64, clear []string) {
	set = map[string]uint64{}
	for sh, f := range frontiers {
		low, owed := f, false
		for off := range o.owed[sh] {
			owed = true
			low = min(low, off)
		}
		if owed || explicit {
			set[sh] = low
		}
	}
	for sh := range o.kept {
		if _, ok := set[sh]; !ok && !explicit {
			clear = append(clear, sh)
			delete(o.kept, sh)
		}
	}
	if o.kept == nil {
		o.kept = map[string]bool{}
	}
	for sh := range set {
		o.kept[sh] = true
	}
	return set, clear
}

// owe records that d is queued or inflight: owed to the session, or to
// the shared subscription it came through. s.mu is held. A session that
// is not stored keeps no positions of its own (nothing reads them): it
// becomes stored only when created, at its first CONNECT, before it has
// subscriptions (a session with expiry 0 ends with its connection).
func (s *session) owe(d *delivery) {
	switch {
	case s.ended:
	case d.pos.Shard == "":
		s.copyChanged(d)
	case d.sg != nil:
		d.sg.owe(d.pos)
	case s.stored.Load():
		s.own.add(d.pos)
	}
}

// settle records that d is no longer owed (acknowledged, sent with QoS 0,
// dropped, or moved to another member). s.mu is held.
func (s *session) settle(d *delivery) {
	switch {
	case d.pos.Shard == "":
		s.copyChanged(d)
	case d.sg != nil:
		d.sg.settle(d.pos)
	case s.stored.Load():
		s.own.remove(d.pos)
	}
}

// copyChanged notes that d, a delivery without a position, was owed or
// settled: one with QoS 1 or 2 is kept in the session record by value
// (persist.go, copies), which the next cursor flush rewrites.
func (s *session) copyChanged(d *delivery) {
	if d.qos > 0 {
		s.copied.Store(true)
	}
}

// cursors is owedSet.cursors for the session's own positions.
func (s *session) cursors(frontiers map[string]uint64, explicit bool) (set map[string]uint64, clear []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.own.cursors(frontiers, explicit)
}

func (s *session) owner() *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

// bind attaches c; a pending expiry and a delayed will are cancelled (a new
// connection before the will delay suppresses the will, MQTT 5.0 §3.1.2.5).
// It returns the session's bind count, which c keeps (conn.bindGen) to
// tell at its end whether another connection was bound after it.
func (s *session) bind(c *conn, expiry time.Duration) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.binds++
	s.conn = c
	s.expiry = expiry
	if c != nil {
		s.version = byte(c.version)
	}
	if s.expiryTimer != nil {
		s.expiryTimer.Stop()
		s.expiryTimer = nil
	}
	if s.willTimer != nil {
		s.willTimer.Stop()
		s.willTimer = nil
		s.will = nil
	}
	s.willDue = time.Time{}
	s.offlineSince = time.Time{}
	s.online.Store(true)
	s.wake()
	return s.binds
}

// unbind detaches c if it is still the session's connection, and returns
// the session expiry in force.
// It also returns how many QoS 0 messages were dropped from the queue:
// they are not kept for an offline session.
func (s *session) unbind(c *conn) (expiry time.Duration, droppedQoS0 int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != c {
		return 0, 0, false
	}
	s.conn = nil
	s.offlineSince = time.Now()
	s.online.Store(false)
	s.roomFreed()
	n := len(s.queue)
	s.queue = slices.DeleteFunc(s.queue, func(d delivery) bool {
		if d.qos == 0 {
			s.settle(&d)
			return true
		}
		return false
	})
	return s.expiry, n - len(s.queue), true
}

func (s *session) setExpiry(d time.Duration) {
	s.mu.Lock()
	s.expiry = d
	s.mu.Unlock()
}

func (s *session) setExpiryTimer(d time.Duration, f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		s.expiryTimer = time.AfterFunc(d, f)
	}
}

// stopTimers stops the expiry and will timers (Server.Stop; a stored
// session's expiry and will are re-armed by the next Start).
func (s *session) stopTimers() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.expiryTimer != nil {
		s.expiryTimer.Stop()
	}
	if s.willTimer != nil {
		s.willTimer.Stop()
	}
}

// armWill is the delayed will w of the connection whose bind returned
// gen, which has ended: unless another connection was bound since (it
// suppresses the will, MQTT 5.0 §3.1.2.5, even if it ended the session
// since), the will is armed (armed), or, when the session ended with
// the connection, is due now (publishNow).
func (s *session) armWill(gen uint64, w *pubsub.Message, d time.Duration, publish func(*pubsub.Message)) (armed, publishNow bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.binds != gen:
		return false, false
	case s.ended:
		return false, true
	}
	return s.setWillTimerLocked(w, d, publish), false
}

// setWillTimer arms a delayed will and reports whether it did.
func (s *session) setWillTimer(w *pubsub.Message, d time.Duration, publish func(*pubsub.Message)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setWillTimerLocked(w, d, publish)
}

func (s *session) setWillTimerLocked(w *pubsub.Message, d time.Duration, publish func(*pubsub.Message)) bool {
	if s.ended || s.conn != nil {
		return false
	}
	s.will = w
	s.willDue = time.Now().Add(d)
	s.willTimer = time.AfterFunc(d, func() {
		s.mu.Lock()
		w := s.will
		s.will, s.willTimer, s.willDue = nil, nil, time.Time{}
		s.mu.Unlock()
		if w != nil {
			publish(w)
		}
	})
	return true
}

// end marks the session ended and returns its filters, how many queued or
// inflight messages are dropped with it, and a delayed will still pending.
// What it held of shared subscriptions' messages is settled, so their
// cursors move on, unless keepShared (the server is stopping: the next
// Start replays them to the groups).
func (s *session) end(keepShared bool) (filters []string, dropped int, will *pubsub.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	s.online.Store(false)
	s.roomFreed()
	for f := range s.subs {
		filters = append(filters, f)
	}
	dropped = len(s.queue) + len(s.inflight)
	for i := 0; !keepShared && i < len(s.queue); i++ {
		s.settle(&s.queue[i])
	}
	for _, d := range s.inflight {
		if !keepShared {
			s.settle(d)
		}
	}
	s.queue, s.inflight, s.subs, s.own.owed = nil, nil, nil, nil
	if s.expiryTimer != nil {
		s.expiryTimer.Stop()
	}
	if s.willTimer != nil {
		s.willTimer.Stop()
		will = s.will
	}
	s.will, s.willTimer = nil, nil
	return filters, dropped, will
}

func (s *session) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
	if c := s.writer.Load(); c != nil {
		c.startWriter(false)
	}
}

// hasWork reports queued or inflight deliveries.
func (s *session) hasWork() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue) > 0 || len(s.inflight) > 0
}

// takeShared removes and returns the deliveries this session got through a
// shared subscription that another member can take over (movable says so
// for a group and filter): every queued one, and the inflight QoS 1 ones.
// QoS 2 ones already sent stay: their exchange has begun (and may be
// stored), and the session may still complete it when it reconnects.
func (s *session) takeShared(movable func(*shareGroup) bool) []delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []delivery
	keep := s.queue[:0]
	for _, d := range s.queue {
		if d.sg != nil && movable(d.sg) {
			s.settle(&d)
			out = append(out, d)
			continue
		}
		keep = append(keep, d)
	}
	clear(s.queue[len(keep):])
	s.queue = keep
	for id, d := range s.inflight {
		if d.sg != nil && d.qos == 1 && movable(d.sg) {
			delete(s.inflight, id)
			s.settle(d)
			c := *d
			c.id, c.seq, c.released = 0, 0, false
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b delivery) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// enqueue queues d and returns "" or the reason it was dropped.
func (s *session) enqueue(d delivery, maxQueued int) string {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return dropSessionEnded
	}
	if s.conn == nil && d.qos == 0 {
		s.mu.Unlock()
		return dropOfflineQoS0
	}
	if len(s.queue) >= maxQueued {
		s.mu.Unlock()
		return dropQueueFull
	}
	s.owe(&d)
	s.queue = append(s.queue, d)
	online := s.conn != nil
	s.mu.Unlock()
	if online {
		s.wake()
	}
	return ""
}

// take moves up to max deliveries from the queue for c to send, giving QoS
// 1 and 2 ones a packet identifier while fewer than inflightMax are
// inflight. Expired messages are dropped (counted in expired). The QoS 0
// ones returned are valid until c's next take (conn.sent0).
func (s *session) take(c *conn, inflightMax, max int, now time.Time, dst []*delivery) (out []*delivery, expired int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != c {
		return dst, 0
	}
	clear(c.slab0) // the last take's messages are sent: do not hold them
	c.slab0 = c.slab0[:0]
	n := 0
	for n < len(s.queue) && len(dst) < max {
		d := &s.queue[n] // copied out below: the queue's array is reused
		if d.msg.Expired(now) {
			s.settle(d)
			n++
			expired++
			continue
		}
		if d.qos > 0 {
			if len(s.inflight) >= inflightMax {
				break
			}
			p := new(delivery)
			*p = *d
			p.id = s.allocID()
			s.seq++
			p.seq = s.seq
			s.inflight[p.id] = p
			dst = append(dst, p)
		} else {
			s.settle(d)
			dst = append(dst, c.sent0(d))
		}
		n++
	}
	if n == len(s.queue) && cap(s.queue) <= 1024 {
		clear(s.queue) // keep a small backing array: the next burst reuses it
		s.queue = s.queue[:0]
	} else {
		s.queue = s.queue[n:]
		if len(s.queue) == 0 {
			s.queue = nil // let the backing array go
		}
	}
	if n > 0 {
		s.roomFreed()
	}
	return dst, expired
}

// allocID returns a packet identifier not inflight. Fewer than 65535 are
// inflight (Options.Validate), so one is free.
func (s *session) allocID() uint16 {
	for {
		s.nextID++
		if s.nextID == 0 {
			s.nextID = 1
		}
		if _, used := s.inflight[s.nextID]; !used {
			return s.nextID
		}
	}
}

// awaitRelease records an inbound QoS 2 packet identifier answered with
// a positive PUBREC, until its PUBREL.
func (s *session) awaitRelease(id uint16) {
	s.mu.Lock()
	if s.inQoS2 != nil {
		s.inQoS2[id] = struct{}{}
	}
	s.mu.Unlock()
}

// resend returns the inflight deliveries in send order, for a resumed
// session [MQTT-4.4.0-1].
func (s *session) resend() []*delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	ds := make([]*delivery, 0, len(s.inflight))
	for _, d := range s.inflight {
		ds = append(ds, d)
	}
	slices.SortFunc(ds, func(a, b *delivery) int { return cmp.Compare(a.seq, b.seq) })
	return ds
}

// acked removes an inflight delivery (PUBACK, PUBCOMP, or a failed PUBREC)
// and returns it, nil if it was not there (or not in the wanted state).
func (s *session) acked(id uint16, wantReleased bool) *delivery {
	s.mu.Lock()
	d, ok := s.inflight[id]
	if ok && d.released == wantReleased {
		delete(s.inflight, id)
		s.settle(d)
	} else {
		d = nil
	}
	s.mu.Unlock()
	if ok {
		s.wake()
	}
	return d
}

// received marks a QoS 2 delivery released (PUBREC received) and returns
// it, nil if it is not inflight.
func (s *session) received(id uint16) *delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.inflight[id]
	if d != nil {
		d.released = true
	}
	return d
}

// slab0Len is how many QoS 0 deliveries of one take live in conn.slab0.
const slab0Len = 256

// sent0 returns a copy of QoS 0 delivery d for c's writer to send: in
// c.slab0, reused by every take (one allocation per QoS 0 delivery was
// most of what the writer allocated), or on the heap past slab0Len.
func (c *conn) sent0(d *delivery) *delivery {
	if c.slab0 == nil {
		c.slab0 = make([]delivery, 0, slab0Len)
	}
	if len(c.slab0) == cap(c.slab0) {
		p := new(delivery)
		*p = *d
		return p
	}
	c.slab0 = append(c.slab0, *d)
	return &c.slab0[len(c.slab0)-1]
}
