package node

// MQTT session ownership across the cluster (issue #6), the node's side of
// frontends/mqtt.SessionDirectory (frontends/mqtt/directory.go): meta keeps
// which node owns each session, one record per client id under
// PrefixMQTTSessions, written by CAS when a CONNECT comes to a node that
// does not own the session (a low-rate Raft write: CONNECTs, not
// messages). The previous owner is then asked, through the Forwarder
// service's Release RPC, to close the client's connection and end its copy
// of the session, returning its state when the CONNECT has no Clean Start
// (installed here by frontends/mqtt); CONNACK waits for its answer, at
// most releaseTimeout, and a failed call is made again within it. A
// session without a record (made while the node was alone) is released by
// every node that is up. A node that was down drops, at its next start,
// the restored sessions that meta says another node owns.
//
// Two-phase handover: the previous owner keeps the state it returned
// until this node stored the session and calls Forget (or for
// mqtt.HandoverTTL), and answers a Release again with the same state. A
// previous owner that is up but did not answer may hold such a state: the
// CONNECT is refused (mqtt.ErrHandoverIncomplete; the client connects
// again) and the next CONNECT here asks it again (unfinished), for at most
// handoverPatience, after which the session starts without it.
//
// One owner at a time: two CONNECTs of a client id racing on two nodes
// both claim it, and meta orders the claims (the owner record's version).
// A Release that reaches a node while that node is binding a CONNECT of
// the client id under an older claim (or one whose version it does not
// know yet) answers retry: the caller calls again until that CONNECT is
// bound, and then closes it (0x8E) and takes the session, as for any
// takeover. A claim is made to wait only by an older one (or one whose
// version is being written, which is then newer): two claims never wait
// for each other past that. The CONNECTs of one client id on one node
// claim one after the other (begin): a second one must not find the
// session this node's while the first still fetches its state.
//
// While the node is alone in the cluster nothing is read or written per
// CONNECT (the node list is read at most every peerPoll): a single node
// connects as fast as without a cluster.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/quiremq/quire/frontends/mqtt"
	"github.com/quiremq/quire/internal/metrics"
	mqttclusterv1 "github.com/quiremq/quire/internal/proto/mqttcluster/v1"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// PrefixMQTTSessions holds one record per MQTT client id whose session a
// node of a cluster claimed: the owning node (mqttSessionOwner).
const PrefixMQTTSessions = "/mqtt/sessions/"

// MQTTSessionKey is the owner record of clientID's session.
func MQTTSessionKey(clientID string) string { return PrefixMQTTSessions + clientID }

// mqttSessionOwner is a record under PrefixMQTTSessions.
type mqttSessionOwner struct {
	ClientID  string    `json:"client_id"`
	Node      uint64    `json:"node"`
	ClaimedAt time.Time `json:"claimed_at"`
}

// releaseTimeout bounds a Release call to the previous owner.
const releaseTimeout = 3 * time.Second

// handoverPatience bounds how long CONNECTs of a session are refused
// because its previous owner, up, does not answer Release (it may keep
// the session's state for a retry): then the session starts without it.
const handoverPatience = time.Minute

// sessionDirectory implements mqtt.SessionDirectory on meta and the
// peers' Release RPC.
type sessionDirectory struct {
	self   uint64
	kv     func() meta.KV
	log    *slog.Logger
	claims *prometheus.CounterVec

	mu      sync.Mutex // held while the node list is read
	peers   []schema.NodeState
	peersAt time.Time

	cmu        sync.Mutex
	binding    map[string]*inflightClaim    // the CONNECT binding here under a claim, by client id (one at a time)
	unfinished map[string]unfinishedRelease // sessions claimed here whose previous owner did not answer

	cluster atomic.Pointer[mqttCluster] // while routing runs: raises Since after a handover

	// replyFault, a test hook of the serving node, fails Release's reply
	// after the session was released (a lost reply).
	replyFault atomic.Pointer[func(clientID string) error]
	// boundHook, a test hook, runs when a CONNECT that claimed a session
	// here is bound to it, before its CONNACK is sent.
	boundHook atomic.Pointer[func(clientID string)]
}

// inflightClaim is a CONNECT binding under a claim: version is its owner
// record's version in meta, 0 until known (cmu); done closes when it is
// bound or failed.
type inflightClaim struct {
	version uint64
	done    chan struct{}
}

// unfinishedRelease is a Release of a claimed session that did not answer.
type unfinishedRelease struct {
	from  uint64 // the previous owner
	since time.Time
}

var _ mqtt.SessionDirectory = (*sessionDirectory)(nil)

func newSessionDirectory(self uint64, kv func() meta.KV, reg prometheus.Registerer, log *slog.Logger) *sessionDirectory {
	claims := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "mqtt_cluster", Name: "session_claims_total",
		Help: "CONNECTs for a session this node did not own, by outcome: released (the previous owner ended its copy), absent (no peer held it), unreachable (the previous owner is down; it drops the session at its next start), incomplete (the previous owner is up but did not answer: the CONNECT is refused, the next one asks again), failed (meta refused the claim)."},
		[]string{"outcome"})
	return &sessionDirectory{self: self, kv: kv, log: log.With("component", "mqtt-sessions"), claims: metrics.Reuse(reg, claims),
		binding: map[string]*inflightClaim{}, unfinished: map[string]unfinishedRelease{}}
}

// others returns the other registered nodes, read at most every peerPoll
// unless fresh.
func (d *sessionDirectory) others(ctx context.Context, fresh bool) ([]schema.NodeState, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !fresh && !d.peersAt.IsZero() && time.Since(d.peersAt) < peerPoll {
		return d.peers, nil
	}
	kv := d.kv()
	if kv == nil {
		return nil, errors.New("meta is not running")
	}
	nodes, err := schema.Store{KV: kv}.StaleNodes(ctx)
	if err != nil {
		return nil, err
	}
	peers := make([]schema.NodeState, 0, len(nodes))
	for _, n := range nodes {
		if n.Node.ID != d.self {
			peers = append(peers, n)
		}
	}
	d.peers, d.peersAt = peers, time.Now()
	return peers, nil
}

// begin registers a CONNECT of clientID binding under a claim, once the
// one binding here before it (if any) is bound or failed: a second
// CONNECT must not take the session for this node's while the first is
// still fetching its state.
func (d *sessionDirectory) begin(ctx context.Context, clientID string) (*inflightClaim, error) {
	cl := &inflightClaim{done: make(chan struct{})}
	for {
		d.cmu.Lock()
		prev := d.binding[clientID]
		if prev == nil {
			d.binding[clientID] = cl
			d.cmu.Unlock()
			return cl, nil
		}
		d.cmu.Unlock()
		select {
		case <-prev.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for another CONNECT of the client on this node: %w", ctx.Err())
		}
	}
}

// claimed sets cl's version.
func (d *sessionDirectory) claimed(cl *inflightClaim, version uint64) {
	d.cmu.Lock()
	cl.version = version
	d.cmu.Unlock()
}

// end removes cl: its CONNECT is bound, or failed.
func (d *sessionDirectory) end(clientID string, cl *inflightClaim) {
	d.cmu.Lock()
	defer d.cmu.Unlock()
	if d.binding[clientID] == cl {
		delete(d.binding, clientID)
	}
	close(cl.done)
}

// older reports whether a CONNECT of clientID is binding here under a
// claim older than version (or of a version not known yet): a Release
// for the claim of version must wait until it is bound.
func (d *sessionDirectory) older(clientID string, version uint64) bool {
	if version == 0 {
		return false // a caller that does not say
	}
	d.cmu.Lock()
	defer d.cmu.Unlock()
	cl := d.binding[clientID]
	return cl != nil && cl.version < version
}

// Claim implements mqtt.SessionDirectory.
func (d *sessionDirectory) Claim(ctx context.Context, clientID string, cleanStart bool) (*mqttclusterv1.SessionState, func(bool), error) {
	peers, err := d.others(ctx, false)
	if err != nil {
		return nil, nil, err
	}
	if len(peers) == 0 {
		return nil, nil, nil // alone: every session is this node's
	}
	kv := d.kv()
	if kv == nil {
		return nil, nil, errors.New("meta is not running")
	}
	cl, err := d.begin(ctx, clientID)
	if err != nil {
		return nil, nil, err
	}
	var from uint64 // the node whose state is returned
	done := func(stored bool) {
		d.end(clientID, cl)
		if stored && from != 0 {
			go d.forget(from, clientID)
		}
		if f := d.boundHook.Load(); f != nil && stored {
			(*f)(clientID)
		}
	}
	prev, version, err := d.own(ctx, kv, clientID, cl)
	if err != nil {
		return nil, done, err
	}
	if prev == d.self {
		u, ok := d.unfinishedOf(clientID)
		if !ok {
			return nil, done, nil
		}
		prev = u.from // owned here, but its previous owner did not answer: again
	}
	state, outcome, err := d.releaseFrom(ctx, peers, prev, clientID, cleanStart, version)
	if state != nil {
		from = state.Origin
	}
	d.claims.WithLabelValues(outcome).Inc()
	return state, done, err
}

// own makes this node the owner of clientID's session in meta (CAS) and
// returns the previous owner (0: none recorded; this node: it owned it
// already) and the owner record's version, which cl takes.
func (d *sessionDirectory) own(ctx context.Context, kv meta.KV, clientID string, cl *inflightClaim) (prev, version uint64, err error) {
	key := MQTTSessionKey(clientID)
	for {
		rec, err := schema.Get[mqttSessionOwner](ctx, kv, key)
		switch {
		case errors.Is(err, meta.ErrNotFound):
			prev, rec.Version = 0, 0
		case err != nil:
			d.claims.WithLabelValues("failed").Inc()
			return 0, 0, fmt.Errorf("reading the owner of the session: %w", err)
		default:
			prev = rec.Value.Node
		}
		if prev == d.self {
			d.claimed(cl, rec.Version)
			return prev, rec.Version, nil
		}
		version, err = schema.CAS(ctx, kv, key, rec.Version, mqttSessionOwner{ClientID: clientID, Node: d.self, ClaimedAt: time.Now().UTC()})
		if errors.Is(err, meta.ErrVersionMismatch) {
			continue // another node claimed it meanwhile: take it from that one
		}
		if err != nil {
			d.claims.WithLabelValues("failed").Inc()
			return 0, 0, fmt.Errorf("claiming the session: %w", err)
		}
		d.claimed(cl, version)
		return prev, version, nil
	}
}

// releaseFrom has prev (0: every node that is up) release clientID's
// session, and returns the state one returned (nil if none) and the
// claim's outcome. An error wrapping mqtt.ErrHandoverIncomplete says that
// prev, up, did not answer.
func (d *sessionDirectory) releaseFrom(ctx context.Context, peers []schema.NodeState, prev uint64, clientID string, cleanStart bool, version uint64) (*mqttclusterv1.SessionState, string, error) {
	// The previous owner is asked even when it is listed down: its lease
	// lapses on a node too slow to renew it (under load), which still
	// serves the client's connection; one that stopped refuses the call at
	// once (it is asked once).
	var targets []schema.NodeState
	for _, p := range peers {
		if (p.Node.ID == prev || prev == 0 && p.Up) && peerAddr(p.Node) != "" {
			targets = append(targets, p)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	type answer struct {
		peer uint64
		resp *mqttclusterv1.ReleaseResponse
		err  error
	}
	answers := make(chan answer, len(targets))
	for _, p := range targets {
		go func() {
			resp, err := d.release(ctx, peerAddr(p.Node), clientID, cleanStart, version, !p.Up)
			if err != nil {
				err = fmt.Errorf("node %d: %w", p.Node.ID, err)
			}
			answers <- answer{p.Node.ID, resp, err}
		}()
	}
	outcome := "absent"
	if prev != 0 && len(targets) == 0 {
		outcome = "unreachable" // down: it drops the session at its next start
	}
	var errs []error
	var state *mqttclusterv1.SessionState
	for range targets {
		a := <-answers
		switch {
		case errors.Is(a.err, errUnreadable):
			// Released, but in a form this node cannot install: asking
			// again brings the same.
			outcome = "released"
			d.log.Warn("mqtt session released by another node, but its state is not usable here; the session starts without it",
				"client_id", clientID, "err", a.err)
		case a.err != nil:
			errs = append(errs, a.err)
			if prev != 0 {
				outcome = "unreachable"
			}
		case a.resp.Released:
			outcome = "released"
			if a.resp.Session != nil {
				state = a.resp.Session // one node held the session
				d.raiseSince(a.peer, state)
			}
		}
	}
	if prev == 0 || len(errs) == 0 {
		d.dropUnfinished(clientID)
		if len(errs) > 0 {
			d.log.Info("mqtt session claimed, but a node did not release it; it drops it at its next start", "client_id", clientID, "err", errors.Join(errs...))
		} else {
			d.log.Debug("mqtt session claimed", "client_id", clientID, "from", prev, "outcome", outcome)
		}
		return state, outcome, nil
	}
	// prev did not answer: if it is up, it may keep the state it released
	// for a retry.
	err := errors.Join(errs...)
	if cleanStart || !d.up(prev) {
		d.dropUnfinished(clientID)
		d.log.Info("mqtt session claimed, but its previous owner did not release it; it drops it at its next start", "client_id", clientID, "err", err)
		return nil, "unreachable", nil
	}
	if since := d.markUnfinished(clientID, prev); time.Since(since) < handoverPatience {
		d.log.Info("mqtt session claimed, but its previous owner, up, did not answer: the CONNECT is refused until it does", "client_id", clientID, "from", prev, "err", err)
		return nil, "incomplete", fmt.Errorf("node %d: %w: %w", prev, mqtt.ErrHandoverIncomplete, err)
	}
	d.dropUnfinished(clientID)
	d.log.Warn("mqtt session's previous owner did not answer for too long: the session starts without its state", "client_id", clientID, "from", prev,
		"patience", handoverPatience, "err", err)
	return nil, "unreachable", nil
}

// up reports whether node is registered as up (read now; true when the
// list cannot be read).
func (d *sessionDirectory) up(node uint64) bool {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	peers, err := d.others(ctx, true)
	if err != nil {
		return true
	}
	for _, p := range peers {
		if p.Node.ID == node {
			return p.Up
		}
	}
	return false
}

func (d *sessionDirectory) unfinishedOf(clientID string) (unfinishedRelease, bool) {
	d.cmu.Lock()
	defer d.cmu.Unlock()
	u, ok := d.unfinished[clientID]
	return u, ok
}

// markUnfinished records that from did not answer the Release of
// clientID's session, and returns since when.
func (d *sessionDirectory) markUnfinished(clientID string, from uint64) time.Time {
	d.cmu.Lock()
	defer d.cmu.Unlock()
	u, ok := d.unfinished[clientID]
	if !ok || u.from != from {
		u = unfinishedRelease{from: from, since: time.Now()}
		d.unfinished[clientID] = u
	}
	return u.since
}

func (d *sessionDirectory) dropUnfinished(clientID string) {
	d.cmu.Lock()
	delete(d.unfinished, clientID)
	d.cmu.Unlock()
}

// errUnreadable is a Release reply this node cannot read: the node that
// sent it runs another version.
var errUnreadable = errors.New("session state not readable")

// release asks the node at addr to release clientID's session, again
// (with backoff) while the call fails or the node answers retry, until
// ctx ends; a node listed down (once) is asked again only while it
// answers retry. A reply this node cannot read (another version) is an
// error at once.
func (d *sessionDirectory) release(ctx context.Context, addr, clientID string, cleanStart bool, version uint64, once bool) (*mqttclusterv1.ReleaseResponse, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	fc := mqttclusterv1.NewForwarderClient(cc)
	req := &mqttclusterv1.ReleaseRequest{NodeId: d.self, ClientId: clientID, CleanStart: cleanStart, ClaimVersion: version}
	wait := 10 * time.Millisecond
	for {
		resp, err := fc.Release(ctx, req)
		switch {
		case err == nil && !resp.Retry:
			if unknown := resp.ProtoReflect().GetUnknown(); len(unknown) > 0 {
				return nil, fmt.Errorf("%w: its Release reply has fields this node does not know (%d bytes): it runs another version", errUnreadable, len(unknown))
			}
			if resp.Session != nil {
				if err := mqtt.CheckHandover(clientID, resp.Session); err != nil {
					return nil, fmt.Errorf("%w: %w", errUnreadable, err)
				}
			}
			return resp, nil
		case err == nil:
			err = errors.New("it is binding a CONNECT of the client under an older claim")
		case status.Code(err) == codes.Unimplemented || once:
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (given up: %w)", err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// forget tells node from, which handed clientID's session over, that the
// session is stored here: it drops the state it kept (else it does after
// mqtt.HandoverTTL).
func (d *sessionDirectory) forget(from uint64, clientID string) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	peers, err := d.others(ctx, false)
	addr := ""
	for _, p := range peers {
		if p.Node.ID == from {
			addr = peerAddr(p.Node)
		}
	}
	if addr == "" {
		d.log.Info("mqtt session stored here, but the node that handed it over cannot be told", "client_id", clientID, "node", from, "err", err)
		return
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err == nil {
		defer cc.Close()
		for wait := 20 * time.Millisecond; ; wait *= 2 {
			_, err = mqttclusterv1.NewForwarderClient(cc).Forget(ctx, &mqttclusterv1.ForgetRequest{NodeId: d.self, ClientId: clientID})
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(wait)
		}
	}
	if err != nil {
		d.log.Info("mqtt session stored here, but the node that handed it over was not told; it drops its copy in time",
			"client_id", clientID, "node", from, "err", err)
	}
}

// raiseSince has the next filter change sent to each node carry a Since
// no lower than what the session handed over by peer had been handed of
// that node's messages (st's frontiers for peer, its cursors for the
// others): the read again for the session's filters, new here, must not
// bring those twice.
func (d *sessionDirectory) raiseSince(peer uint64, st *mqttclusterv1.SessionState) {
	c := d.cluster.Load()
	if c == nil {
		return
	}
	c.raiseSince(peer, st.Frontiers)
	for _, pc := range st.Cursors {
		if pc.NodeId != d.self {
			c.raiseSince(pc.NodeId, pc.Cursors)
		}
	}
}

// Foreign implements mqtt.SessionDirectory: it reads every owner record
// once.
func (d *sessionDirectory) Foreign(ctx context.Context, clientIDs []string) ([]string, error) {
	kv := d.kv()
	if kv == nil {
		return nil, errors.New("meta is not running")
	}
	var recs []schema.Record[mqttSessionOwner]
	err := schema.RetryNotLeader(ctx, func() (err error) {
		recs, _, err = schema.List[mqttSessionOwner](ctx, kv, PrefixMQTTSessions, false)
		return err
	})
	if err != nil {
		return nil, err
	}
	owner := make(map[string]uint64, len(recs))
	for _, r := range recs {
		owner[r.Value.ClientID] = r.Value.Node
	}
	var out []string
	for _, id := range clientIDs {
		if n, ok := owner[id]; ok && n != d.self {
			out = append(out, id)
		}
	}
	return out, nil
}

// Release implements the Forwarder service's Release: another node took
// the session over. A CONNECT of the client binding here under an older
// claim is bound first (retry).
func (c *mqttCluster) Release(ctx context.Context, r *mqttclusterv1.ReleaseRequest) (*mqttclusterv1.ReleaseResponse, error) {
	d, _ := c.srv.SessionDirectory().(*sessionDirectory)
	if d != nil && d.older(r.ClientId, r.ClaimVersion) {
		return &mqttclusterv1.ReleaseResponse{Retry: true}, nil
	}
	// Taken before the state: what lies below was handed to the session.
	frontiers, cursors := c.src.Frontiers(), c.cursorSnapshot()
	pcs := make([]*mqttclusterv1.PeerCursors, 0, len(cursors))
	for peer, cs := range cursors {
		pcs = append(pcs, &mqttclusterv1.PeerCursors{NodeId: peer, Cursors: cs})
	}
	state, released, err := c.srv.ReleaseSession(ctx, mqtt.Release{ClientID: r.ClientId, CleanStart: r.CleanStart, To: r.NodeId, Self: c.self,
		Frontiers: frontiers, Cursors: pcs})
	if err != nil {
		return nil, err
	}
	if released {
		c.log.Info("mqtt session released to another node", "client_id", r.ClientId, "node", r.NodeId, "owed", len(state.GetOwed()))
	}
	if f := d.fault(); f != nil {
		if err := f(r.ClientId); err != nil {
			return nil, err
		}
	}
	return &mqttclusterv1.ReleaseResponse{Released: released, Session: state}, nil
}

// fault is the test hook replyFault, nil if none (or d nil).
func (d *sessionDirectory) fault() func(string) error {
	if d == nil {
		return nil
	}
	if f := d.replyFault.Load(); f != nil {
		return *f
	}
	return nil
}

// Forget implements the Forwarder service's Forget: the node a session
// was released to stored it.
func (c *mqttCluster) Forget(_ context.Context, r *mqttclusterv1.ForgetRequest) (*mqttclusterv1.ForgetResponse, error) {
	return &mqttclusterv1.ForgetResponse{Forgotten: c.srv.ForgetHandover(r.ClientId, r.NodeId)}, nil
}
