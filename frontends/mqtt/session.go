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

	// Set once sent with QoS 1 or 2:
	id       uint16
	seq      uint64 // send order, for resending in order
	released bool   // QoS 2: PUBREC received, PUBREL sent
}

// session is the state of one client identifier: its subscriptions, its
// queue of messages not yet sent, and its inflight messages (sent with QoS
// 1 or 2, not yet acknowledged). It outlives connections up to its expiry.
// All of it lives in memory (see the package doc).
type session struct {
	id     string
	online atomic.Bool
	notify chan struct{} // capacity 1: wakes the connection's writer

	mu          sync.Mutex
	conn        *conn
	ended       bool
	subs        map[string]pubsub.Subscription // by filter as subscribed ("$share/…" included)
	queue       []delivery
	inflight    map[uint16]*delivery
	seq         uint64
	nextID      uint16
	inQoS2      map[uint16]struct{} // inbound QoS 2 ids awaiting PUBREL
	expiry      time.Duration
	expiryTimer *time.Timer
	will        *pubsub.Message // a delayed will, published when willTimer fires or the session ends
	willTimer   *time.Timer
}

func newSession(id string) *session {
	return &session{id: id, notify: make(chan struct{}, 1), subs: map[string]pubsub.Subscription{},
		inflight: map[uint16]*delivery{}, inQoS2: map[uint16]struct{}{}}
}

func (s *session) owner() *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn
}

// bind attaches c; a pending expiry and a delayed will are cancelled (a new
// connection before the will delay suppresses the will, MQTT 5.0 §3.1.2.5).
func (s *session) bind(c *conn, expiry time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn = c
	s.expiry = expiry
	if s.expiryTimer != nil {
		s.expiryTimer.Stop()
		s.expiryTimer = nil
	}
	if s.willTimer != nil {
		s.willTimer.Stop()
		s.willTimer = nil
		s.will = nil
	}
	s.online.Store(true)
	s.wake()
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
	s.online.Store(false)
	n := len(s.queue)
	s.queue = slices.DeleteFunc(s.queue, func(d delivery) bool { return d.qos == 0 })
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

// setWillTimer arms a delayed will.
func (s *session) setWillTimer(w *pubsub.Message, d time.Duration, publish func(*pubsub.Message)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.conn != nil {
		return
	}
	s.will = w
	s.willTimer = time.AfterFunc(d, func() {
		s.mu.Lock()
		w := s.will
		s.will, s.willTimer = nil, nil
		s.mu.Unlock()
		if w != nil {
			publish(w)
		}
	})
}

// end marks the session ended and returns its filters, how many queued or
// inflight messages are dropped with it, and a delayed will still pending.
func (s *session) end() (filters []string, dropped int, will *pubsub.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	s.online.Store(false)
	for f := range s.subs {
		filters = append(filters, f)
	}
	dropped = len(s.queue) + len(s.inflight)
	s.queue, s.inflight, s.subs = nil, nil, nil
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
// inflight. Expired messages are dropped (counted in expired).
func (s *session) take(c *conn, inflightMax, max int, now time.Time, dst []*delivery) (out []*delivery, expired int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != c {
		return dst, 0
	}
	n := 0
	for n < len(s.queue) && len(dst) < max {
		d := s.queue[n]
		if d.msg.Expired(now) {
			n++
			expired++
			continue
		}
		if d.qos > 0 {
			if len(s.inflight) >= inflightMax {
				break
			}
			d.id = s.allocID()
			s.seq++
			d.seq = s.seq
			p := &d
			s.inflight[d.id] = p
			dst = append(dst, p)
		} else {
			dst = append(dst, &d)
		}
		n++
	}
	s.queue = s.queue[n:]
	if len(s.queue) == 0 {
		s.queue = nil // let the backing array go
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
// and reports whether it was there.
func (s *session) acked(id uint16, wantReleased bool) bool {
	s.mu.Lock()
	d, ok := s.inflight[id]
	if ok && d.released == wantReleased {
		delete(s.inflight, id)
	}
	s.mu.Unlock()
	if ok {
		s.wake()
	}
	return ok
}

// received marks a QoS 2 delivery released (PUBREC received).
func (s *session) received(id uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.inflight[id]
	if ok {
		d.released = true
	}
	return ok
}
