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
// most releaseTimeout. A session without a record (made while the node was
// alone) is released by every node that is up. A node that was down (or
// did not answer) drops, at its next start, the restored sessions that
// meta says another node owns.
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
	"google.golang.org/grpc/credentials/insecure"

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

	cluster atomic.Pointer[mqttCluster] // while routing runs: raises Since after a handover
}

var _ mqtt.SessionDirectory = (*sessionDirectory)(nil)

func newSessionDirectory(self uint64, kv func() meta.KV, reg prometheus.Registerer, log *slog.Logger) *sessionDirectory {
	claims := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "mqtt_cluster", Name: "session_claims_total",
		Help: "CONNECTs for a session this node did not own, by outcome: released (the previous owner ended its copy), absent (no peer held it), unreachable (the previous owner did not answer; it drops the session at its next start), failed (meta refused the claim)."},
		[]string{"outcome"})
	return &sessionDirectory{self: self, kv: kv, log: log.With("component", "mqtt-sessions"), claims: metrics.Reuse(reg, claims)}
}

// others returns the other registered nodes, read at most every peerPoll.
func (d *sessionDirectory) others(ctx context.Context) ([]schema.NodeState, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.peersAt.IsZero() && time.Since(d.peersAt) < peerPoll {
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
	d.peers = d.peers[:0]
	for _, n := range nodes {
		if n.Node.ID != d.self {
			d.peers = append(d.peers, n)
		}
	}
	d.peersAt = time.Now()
	return d.peers, nil
}

// Claim implements mqtt.SessionDirectory.
func (d *sessionDirectory) Claim(ctx context.Context, clientID string, cleanStart bool) ([]byte, error) {
	peers, err := d.others(ctx)
	if err != nil {
		return nil, err
	}
	if len(peers) == 0 {
		return nil, nil // alone: every session is this node's
	}
	kv := d.kv()
	if kv == nil {
		return nil, errors.New("meta is not running")
	}
	key := MQTTSessionKey(clientID)
	var prev uint64
	for {
		rec, err := schema.Get[mqttSessionOwner](ctx, kv, key)
		switch {
		case errors.Is(err, meta.ErrNotFound):
			prev, rec.Version = 0, 0
		case err != nil:
			d.claims.WithLabelValues("failed").Inc()
			return nil, fmt.Errorf("reading the owner of the session: %w", err)
		default:
			prev = rec.Value.Node
		}
		if prev == d.self {
			return nil, nil
		}
		_, err = schema.CAS(ctx, kv, key, rec.Version, mqttSessionOwner{ClientID: clientID, Node: d.self, ClaimedAt: time.Now().UTC()})
		if errors.Is(err, meta.ErrVersionMismatch) {
			continue // another node claimed it meanwhile: take it from that one
		}
		if err != nil {
			d.claims.WithLabelValues("failed").Inc()
			return nil, fmt.Errorf("claiming the session: %w", err)
		}
		break
	}
	// The previous owner, or every node when none is recorded.
	var targets []schema.NodeState
	for _, p := range peers {
		if (prev == 0 || p.Node.ID == prev) && p.Up && peerAddr(p.Node) != "" {
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
			resp, err := d.release(ctx, peerAddr(p.Node), clientID, cleanStart)
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
	var state []byte
	for range targets {
		a := <-answers
		switch {
		case a.err != nil:
			errs = append(errs, a.err)
			if prev != 0 {
				outcome = "unreachable"
			}
		case a.resp.Released:
			outcome = "released"
			if a.resp.State != nil {
				state = a.resp.State // one node held the session
				d.raiseSince(a.peer, a.resp)
			}
		}
	}
	d.claims.WithLabelValues(outcome).Inc()
	if len(errs) > 0 {
		d.log.Info("mqtt session claimed, but a node did not release it; it drops it at its next start", "client_id", clientID, "err", errors.Join(errs...))
	} else {
		d.log.Debug("mqtt session claimed", "client_id", clientID, "from", prev, "outcome", outcome)
	}
	return state, nil
}

// release asks the node at addr to release clientID's session.
func (d *sessionDirectory) release(ctx context.Context, addr, clientID string, cleanStart bool) (*mqttclusterv1.ReleaseResponse, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	return mqttclusterv1.NewForwarderClient(cc).Release(ctx, &mqttclusterv1.ReleaseRequest{NodeId: d.self, ClientId: clientID, CleanStart: cleanStart})
}

// raiseSince has the next filter change sent to each node carry a Since
// no lower than what the session handed over by peer had been handed of
// that node's messages (resp's frontiers for peer, its cursors for the
// others): the read again for the session's filters, new here, must not
// bring those twice.
func (d *sessionDirectory) raiseSince(peer uint64, resp *mqttclusterv1.ReleaseResponse) {
	c := d.cluster.Load()
	if c == nil {
		return
	}
	c.raiseSince(peer, resp.Frontiers)
	for _, pc := range resp.Cursors {
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
// the session over.
func (c *mqttCluster) Release(ctx context.Context, r *mqttclusterv1.ReleaseRequest) (*mqttclusterv1.ReleaseResponse, error) {
	// Taken before the state: what lies below was handed to the session.
	frontiers, cursors := c.src.Frontiers(), c.cursorSnapshot()
	state, released, err := c.srv.ReleaseSession(ctx, r.ClientId, r.CleanStart, c.self)
	if err != nil {
		return nil, err
	}
	resp := &mqttclusterv1.ReleaseResponse{Released: released, State: state}
	if released {
		c.log.Info("mqtt session released to another node", "client_id", r.ClientId, "node", r.NodeId, "state_bytes", len(state))
	}
	if state != nil {
		resp.Frontiers = frontiers
		for peer, cs := range cursors {
			resp.Cursors = append(resp.Cursors, &mqttclusterv1.PeerCursors{NodeId: peer, Cursors: cs})
		}
	}
	return resp, nil
}
