package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quiremq/quire/frontends/listen"
	"github.com/quiremq/quire/frontends/mqtt/packet"
	"github.com/quiremq/quire/frontends/pubsub"
	mqttclusterv1 "github.com/quiremq/quire/internal/proto/mqttcluster/v1"
)

// Server is an MQTT broker. Create it with NewServer, then Start and Stop.
type Server struct {
	opts Options
	log  *slog.Logger
	// afterDetach, a test hook, runs in a closing connection's goroutine
	// right after it detached from its session.
	afterDetach func(clientID string)
	m           *serverMetrics
	tree        *pubsub.Tree

	ctx    context.Context // cancelled by Stop
	cancel context.CancelFunc

	mu        sync.Mutex
	sessions  map[string]*session
	conns     map[*conn]struct{}
	listeners []listen.Listener
	started   bool
	stopped   bool

	wg sync.WaitGroup // accept loops and connections

	rs           ReplayStorage // Options.Storage, when sessions are stored
	stopFlush    chan struct{}
	flushDone    chan struct{}
	flushed      map[string]uint64 // global cursors last written (flushCursors' goroutine)
	gmu          sync.RWMutex
	groups       map[[2]string]*shareGroup // shared subscriptions' owed positions by share name and filter (shared.go)
	groupFlushes int                       // dirtyGroups calls, under gmu

	delayed     *delayer                    // $delayed/ publishes (delayed.go); set by Start
	sysDone     chan struct{}               // closed when the $SYS loop (sys.go) ends
	sysRetained *pubsub.MemoryRetained      // the latest $SYS values
	handed      handedSkips                 // messages of sessions handed over here, not to be queued twice (directory.go)
	pending     map[string]*pendingHandover // sessions handed over to other nodes, not confirmed yet (directory.go); under mu
	handoverTTL time.Duration               // how long pending ones are kept (HandoverTTL; tests shorten it)

	dispatch atomic.Pointer[clusterDispatch] // a cluster's choice of the node of a shared subscription (shared.go)
}

// NewServer checks opts and returns a stopped Server.
func NewServer(opts Options) (*Server, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: opts.Logger.With("component", "mqtt"), tree: pubsub.NewTree(),
		sessions: map[string]*session{}, conns: map[*conn]struct{}{}, groups: map[[2]string]*shareGroup{}, sysRetained: pubsub.NewMemoryRetained(nil),
		pending: map[string]*pendingHandover{}, handoverTTL: HandoverTTL}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.m = newMetrics(opts.Registerer, s)
	if opts.Store != nil {
		s.rs = opts.Storage.(ReplayStorage) // Validate checked
	}
	return s, nil
}

// Start restores the stored sessions (Options.Store), then opens every
// listener and serves them. If one cannot be opened, those already open are
// closed and Start fails.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("mqtt: server already started")
	}
	s.started = true
	s.mu.Unlock()
	if s.persistent() {
		if err := s.restore(ctx); err != nil {
			return fmt.Errorf("mqtt: restoring sessions: %w", err)
		}
		s.stopFlush, s.flushDone = make(chan struct{}), make(chan struct{})
		go s.flushLoop(s.stopFlush, s.flushDone)
		s.dropForeign(ctx) // taken over by other nodes while this one was down
		if err := s.restorePending(); err != nil {
			return fmt.Errorf("mqtt: restoring sessions handed over: %w", err)
		}
	}
	s.delayed = newDelayer(s)
	if err := s.delayed.restore(ctx); err != nil {
		return fmt.Errorf("mqtt: restoring delayed publishes: %w", err)
	}
	go s.delayed.run(s.ctx)
	if s.opts.SysInterval > 0 {
		s.sysDone = make(chan struct{})
		go s.sysLoop(s.ctx, s.sysDone)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cfg := range s.opts.Listeners {
		user := cfg.OnRefused
		cfg.OnRefused = func(name, reason string) {
			s.m.refused.WithLabelValues(name, reason).Inc()
			if user != nil {
				user(name, reason)
			}
		}
		l, err := listen.Listen(cfg)
		if err != nil {
			for _, l := range s.listeners {
				l.Close()
			}
			s.listeners = nil
			return fmt.Errorf("mqtt: %w", err)
		}
		s.listeners = append(s.listeners, l)
		s.log.Info("mqtt listening", "listener", l.Name(), "addr", l.Addr().String())
	}
	for _, l := range s.listeners {
		s.wg.Add(1)
		go s.acceptLoop(l)
	}
	return nil
}

// Addr returns the bound address of the listener called name, nil if none.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.listeners {
		if l.Name() == name {
			return l.Addr()
		}
	}
	return nil
}

// Stop closes the listeners, disconnects every client (v5: DISCONNECT
// 0x8B Server shutting down) and waits for their goroutines or for ctx. Wills
// are not published on Stop: the clients did nothing wrong. Sessions that
// are not stored end; stored ones stay in the store (with their pending
// wills and expiry) for the next Start, and their cursors are flushed.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	for _, l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.cancel()
	if s.delayed != nil {
		<-s.delayed.done
	}
	if s.sysDone != nil {
		<-s.sysDone
	}
	for _, c := range conns {
		c.kick(packet.ServerShuttingDown)
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("mqtt: stop: %w", ctx.Err())
	}
	s.mu.Lock()
	for _, sess := range s.sessions {
		sess.stopTimers()
	}
	s.mu.Unlock()
	s.stopPending()
	if s.stopFlush != nil {
		close(s.stopFlush)
		<-s.flushDone
		s.flushCursors()
	}
	return nil
}

func (s *Server) acceptLoop(l listen.Listener) {
	defer s.wg.Done()
	for {
		nc, err := l.Accept(s.ctx)
		if err != nil {
			if !errors.Is(err, listen.ErrClosed) && !errors.Is(err, context.Canceled) {
				s.log.Error("mqtt accept failed; listener stopped", "listener", l.Name(), "err", err)
			}
			return
		}
		c := newConn(s, nc)
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

func (s *Server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// publish stores m, sets or clears the retained message, and queues m for
// every matching subscription. It returns once the storage append returned:
// the caller acknowledges after that.
func (s *Server) publish(ctx context.Context, m *pubsub.Message) error {
	pos, err := s.opts.Storage.Append(ctx, m)
	if err != nil {
		s.m.storageErrors.Inc()
		return err
	}
	s.stored(ctx, m, pos)
	return nil
}

// stored hands m, appended at pos, to the retained store and the matching
// online sessions.
func (s *Server) stored(ctx context.Context, m *pubsub.Message, pos Position) {
	s.m.published[m.QoS].Inc()
	if m.Retain {
		if err := s.opts.Retained.Set(ctx, m); err != nil {
			s.log.Warn("mqtt retained store failed", "topic", m.Topic, "err", err)
		}
	}
	var subs [4]pubsub.Subscription // most messages match a few: no allocation
	s.deliverStored(m, pos, s.tree.Match(m.Topic, subs[:0], onlineSub))
	if s.rs != nil && pos.Shard != "" {
		s.rs.Done(pos)
	}
}

// onlineSub accepts the subscriptions of sessions with a connection (for
// Tree.Match's choice of a shared-subscription member).
func onlineSub(sub pubsub.Subscription) bool { return sub.Owner.(*session).online.Load() }

// deliver queues m, stored at pos, for each of the matching subscriptions
// subs that keep accepts (nil: all): one delivery per session for its
// non-shared subscriptions (highest QoS, every subscription identifier,
// MQTT 5.0 §3.3.4) and one per shared group. It returns how many
// deliveries were queued.
// mergeScan is how many deliveries of one message deliver scans to find a
// session's before it builds a map.
const mergeScan = 16

func (s *Server) deliver(m *pubsub.Message, pos Position, subs []pubsub.Subscription, keep func(pubsub.Subscription) bool) int {
	if len(subs) == 0 {
		return 0
	}
	// Most messages match a few subscriptions: the deliveries start in
	// arrays on the stack, and a session's non-shared delivery is found by
	// scanning owners; a map (merged) only past mergeScan deliveries.
	var dsBuf [4]delivery
	var ownersBuf [4]*session
	ds, owners := dsBuf[:0], ownersBuf[:0]
	var merged map[*session]int // index into ds of a session's non-shared delivery
	own := func(sess *session) int {
		if merged != nil {
			if i, ok := merged[sess]; ok {
				return i
			}
			return -1
		}
		for i, o := range owners {
			if o == sess && ds[i].sg == nil {
				return i
			}
		}
		return -1
	}
	for _, sub := range subs {
		sess := sub.Owner.(*session)
		if sub.Group == "" && sub.NoLocal && sess.id == m.Publisher {
			continue
		}
		if keep != nil && !keep(sub) {
			continue
		}
		qos := min(m.QoS, sub.QoS)
		if sub.Group == "" {
			if i := own(sess); i >= 0 {
				d := &ds[i]
				d.qos = max(d.qos, qos)
				d.retain = d.retain || (m.Retain && sub.RetainAsPublished)
				if sub.ID != 0 {
					d.subIDs = append(d.subIDs, sub.ID)
				}
				continue
			}
			if merged == nil && len(ds) >= mergeScan {
				merged = make(map[*session]int, len(subs))
				for i, o := range owners {
					if ds[i].sg == nil {
						merged[o] = i
					}
				}
			}
			if merged != nil {
				merged[sess] = len(ds)
			}
		}
		d := delivery{msg: m, qos: qos, retain: m.Retain && sub.RetainAsPublished, pos: pos}
		if sub.Group != "" {
			d.sg = s.shareGroup(sub.Group, sub.Filter)
		}
		if sub.ID != 0 {
			d.subIDs = []uint32{sub.ID}
		}
		ds = append(ds, d)
		owners = append(owners, sess)
	}
	n := 0
	for i, d := range ds {
		if reason := owners[i].enqueue(d, s.opts.MaxQueued); reason != "" {
			s.m.dropped.WithLabelValues(reason).Inc()
		} else {
			n++
		}
	}
	return n
}

// attach binds c to the session of clientID, taking it over from another
// connection if it has one (that connection gets DISCONNECT 0x8E and is
// closed before attach goes on, MQTT 5.0 §3.1.4). With cleanStart, an
// existing session ends and a new one begins. It reports whether an
// existing session was resumed (CONNACK Session Present). On a cluster
// (Options.Sessions) the session is first claimed from the node that owned
// it, whose copy ends and, without cleanStart, whose state is taken over
// here and stored before that node is told to forget it (directory.go).
func (s *Server) attach(ctx context.Context, c *conn, clientID string, cleanStart bool, expiry time.Duration) (*session, bool, error) {
	state, done, err := s.claim(ctx, clientID, cleanStart) // another node's copy ends first, its state comes here (directory.go)
	if err != nil {
		done(false)
		return nil, false, err
	}
	sess, present, imported, err := s.bindSession(ctx, c, clientID, cleanStart, expiry, state)
	if err == nil && imported {
		err = s.storeInbound(sess)
	}
	done(err == nil)
	return sess, present, err
}

// bindSession is attach once the session is claimed: state, if not nil,
// is the session handed over by another node (imported reports whether
// it was installed).
func (s *Server) bindSession(ctx context.Context, c *conn, clientID string, cleanStart bool, expiry time.Duration,
	state *mqttclusterv1.SessionState) (sess *session, present, imported bool, err error) {
	for {
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			return nil, false, false, errors.New("mqtt: server stopping")
		}
		old := s.sessions[clientID]
		if old == nil && state != nil {
			old, state = s.importLocked(clientID, state), nil
			imported = old != nil
		}
		if old != nil {
			if oc := old.owner(); oc != nil && oc != c {
				s.mu.Unlock()
				if err := s.takeOver(ctx, oc, "mqtt session taken over", "client_id", clientID, "old_remote", oc.remote, "new_remote", c.remote); err != nil {
					return nil, false, false, err
				}
				continue
			}
		}
		present := old != nil && !cleanStart
		if old != nil && cleanStart {
			s.endSessionLocked(old)
			old = nil
		}
		sess := old
		if sess == nil {
			sess = newSession(clientID)
			s.sessions[clientID] = sess
		}
		c.bindGen = sess.bind(c, expiry)
		s.mu.Unlock()
		s.takeOverShared(sess)
		if s.persistent() && (expiry > 0 || sess.stored.Load()) {
			// Durable before CONNACK: a client told Session Present
			// after a restart must find it.
			if err := s.startStoring(sess); err != nil {
				return nil, false, false, err
			}
		}
		return sess, present, imported, nil
	}
}

// takeOver closes oc, the connection of a session another connection or
// node takes over (v5: DISCONNECT 0x8E, MQTT 5.0 §3.1.4), logging msg
// with args, and waits until it is done or ctx ends.
func (s *Server) takeOver(ctx context.Context, oc *conn, msg string, args ...any) error {
	s.m.takeovers.Inc()
	s.log.Info(msg, args...)
	oc.kick(packet.SessionTakenOver)
	select {
	case <-oc.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// detach unbinds c from sess when c closes: a session with expiry 0 ends,
// any other waits for its expiry.
func (s *Server) detach(c *conn, sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	expiry, dropped, ok := sess.unbind(c)
	if !ok {
		return
	}
	s.redeliverShared(sess, false)
	if dropped > 0 {
		s.m.dropped.WithLabelValues(dropOfflineQoS0).Add(float64(dropped))
	}
	if s.stopped && expiry > 0 && sess.stored.Load() {
		// Kept in the store for the next Start.
		s.saveSession(sess, false, true)
		return
	}
	if expiry == 0 || s.stopped {
		if s.sessions[sess.id] == sess {
			s.endSessionLocked(sess)
		}
		return
	}
	s.saveSession(sess, false, false) // offline since now
	s.armExpiry(sess, expiry)
}

// redeliverShared hands the messages sess got through shared subscriptions
// and has not acknowledged (queued, or QoS 1 inflight) to other members of
// the same groups, round robin: online ones when its connection is gone
// (MQTT 5.0 §4.8.2), any when the session ends (anyMember). Without such a
// member they stay with sess. The new member gets each message once more,
// possibly after the old one received it without acknowledging: at least
// once, as QoS 1 promises.
func (s *Server) redeliverShared(sess *session, anyMember bool) {
	others := map[[2]string][]pubsub.Subscription{}
	members := func(group, filter string) []pubsub.Subscription {
		k := [2]string{group, filter}
		if m, ok := others[k]; ok {
			return m
		}
		var m []pubsub.Subscription
		for _, sub := range s.tree.SharedMembers(group, filter) {
			if o := sub.Owner.(*session); o != sess && (anyMember || o.online.Load()) {
				m = append(m, sub)
			}
		}
		others[k] = m
		return m
	}
	taken := sess.takeShared(func(g *shareGroup) bool { return len(members(g.group, g.filter)) > 0 })
	s.moveShared(taken, func(i int, d delivery) pubsub.Subscription {
		ms := members(d.sg.group, d.sg.filter)
		return ms[i%len(ms)]
	})
	if anyMember {
		s.handBackShared(sess) // no member here: to another node (shared.go)
	}
}

// armExpiry ends sess after d unless a connection takes it first.
func (s *Server) armExpiry(sess *session, d time.Duration) {
	sess.setExpiryTimer(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.stopped && s.sessions[sess.id] == sess && sess.owner() == nil {
			s.log.Debug("mqtt session expired", "client_id", sess.id)
			s.endSessionLocked(sess)
		}
	})
}

// endSessionLocked removes sess and its subscriptions. s.mu is held.
func (s *Server) endSessionLocked(sess *session) {
	delete(s.sessions, sess.id)
	if !s.stopped {
		s.redeliverShared(sess, true) // the group's messages stay the group's
	}
	subs, dropped, will := sess.end(s.stopped)
	s.deleteStored(sess)
	for _, f := range subs {
		s.unsubscribe(sess.id, f)
	}
	if dropped > 0 {
		s.m.dropped.WithLabelValues(dropSessionEnded).Add(float64(dropped))
	}
	if will != nil {
		// The session ends before the will delay elapsed: publish now
		// (MQTT 5.0 §3.1.3.2.2).
		go s.publishWill(will)
	}
}

func (s *Server) publishWill(w *pubsub.Message) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w.Time = time.Now()
	if err := s.publish(ctx, w); err != nil {
		s.log.Warn("mqtt will not published", "client_id", w.Publisher, "topic", w.Topic, "err", err)
	}
}
