package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/config"
	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
	"github.com/quiremq/quire/internal/version"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// metaDir is the meta service's directory under data_dir.
const metaDir = "meta"

// metaServices are the gRPC services of meta on the inner gRPC server.
var metaServices = []string{metav1.Meta_ServiceDesc.ServiceName, metav1.RaftTransport_ServiceDesc.ServiceName}

// metaComponent runs the node's meta server (package meta): Raft and the
// meta.v1.Meta service ride the inner gRPC server. meta.Open touches the
// disk, so the server is built by Start, after the data directory is locked
// and the gRPC server serves; its services are reserved when the node is
// built and attached then (grpcServer.reserve, lateServices).
//
// Start opens and starts the server, waits for a leader (a majority of
// meta_addrs up: [meta] leader_wait_timeout, logging while it waits), and
// registers the node under a lease kept alive by heartbeats
// (schema.Register). Stop revokes the registration, so the node shows down
// at once, and stops Raft.
type metaComponent struct {
	opts    meta.Options
	fs      vfs.FS
	grpc    *grpcServer
	log     *slog.Logger
	wait    time.Duration // for a leader
	ttl     time.Duration // of the node's lease
	self    func() schema.Node
	voters  []meta.Voter
	srv     atomic.Pointer[meta.Server]
	existed bool // the meta directory held Raft state before Start

	mu  sync.Mutex
	reg *schema.Registration
}

func newMetaComponent(cfg *config.Config, fs vfs.FS, dataDir string, reg prometheus.Registerer, g *grpcServer,
	log *slog.Logger, self func() schema.Node) (*metaComponent, error) {
	cvs, err := cfg.Voters() // validated with the rest of the config
	if err != nil {
		return nil, fmt.Errorf("meta_addrs: %w", err)
	}
	voters := make([]meta.Voter, len(cvs))
	for i, v := range cvs {
		voters[i] = meta.Voter{ID: v.ID, Addr: v.Addr}
	}
	m := cfg.Meta
	c := &metaComponent{
		opts: meta.Options{
			ID: cfg.NodeID, Voters: voters, Dir: fs.PathJoin(dataDir, metaDir), FS: fs,
			HeartbeatTimeout: m.HeartbeatTimeout.Std(), ElectionTimeout: m.ElectionTimeout.Std(),
			LeaderLeaseTimeout: m.LeaderLeaseTimeout.Std(), Logger: log, Registerer: reg,
		},
		fs: fs, grpc: g, log: log, wait: m.LeaderWaitTimeout.Std(), ttl: m.NodeLeaseTTL.Std(),
		self: self, voters: voters,
	}
	o := c.opts
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	for _, s := range metaServices {
		g.reserve(s)
	}
	return c, nil
}

func (c *metaComponent) Name() string { return "meta" }

// server returns the running meta server, nil when it is not running.
func (c *metaComponent) server() *meta.Server { return c.srv.Load() }

// kv is server as a meta.KV (nil when not running).
func (c *metaComponent) kv() meta.KV {
	if s := c.srv.Load(); s != nil {
		return s
	}
	return nil
}

func (c *metaComponent) Start(ctx context.Context) error {
	_, err := c.fs.Stat(c.fs.PathJoin(c.opts.Dir, "raft"))
	c.existed = err == nil
	srv, err := meta.Open(c.opts)
	if err != nil {
		return err
	}
	srv.Register(c.grpc.late)
	fail := func(err error) error {
		c.grpc.late.detach(metaServices...)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		return errors.Join(err, srv.Stop(sctx))
	}
	if err := srv.Start(ctx); err != nil {
		return fail(err)
	}
	c.srv.Store(srv)
	for _, s := range metaServices {
		c.grpc.setServing(s, true)
	}
	leader, err := c.waitLeader(ctx, srv)
	if err != nil {
		c.srv.Store(nil)
		return fail(err)
	}
	self := c.self()
	c.log.Info("meta leader elected", "leader", leader, "this_node_leads", leader == c.opts.ID, "voters", voterList(c.voters))
	reg, err := c.register(ctx, srv, self)
	if err != nil {
		c.srv.Store(nil)
		return fail(fmt.Errorf("registering node %d in meta: %w", self.ID, err))
	}
	c.mu.Lock()
	c.reg = reg
	c.mu.Unlock()
	c.log.Info("node registered in meta", "node", self.ID, "roles", strings.Join(self.Roles, ","), "lease_ttl", c.ttl)
	return nil
}

func voterList(vs []meta.Voter) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = v.String()
	}
	return strings.Join(s, ",")
}

// waitLeader waits up to c.wait for a leader, saying every few seconds what
// it waits for.
func (c *metaComponent) waitLeader(ctx context.Context, srv *meta.Server) (uint64, error) {
	wctx, cancel := context.WithTimeout(ctx, c.wait)
	defer cancel()
	t0 := time.Now()
	need := len(c.voters)/2 + 1
	c.log.Info("waiting for a meta leader", "voters", voterList(c.voters), "majority", need, "timeout", c.wait)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				c.log.Warn("still waiting for a meta leader: a majority of the voters must be up and reach each other's [grpc] addr",
					"waited", time.Since(t0).Round(time.Second), "majority", need, "voters", voterList(c.voters), "timeout", c.wait)
			}
		}
	}()
	id, err := srv.WaitLeader(wctx)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("no meta leader after %s ([meta] leader_wait_timeout): %d of the %d voters in meta_addrs (%s) must be up and reach each other's inner gRPC address: %w",
			c.wait, need, len(c.voters), voterList(c.voters), err)
	}
	return id, nil
}

// register writes the node's registration, retrying while leadership
// settles (a write can fail with ErrNotLeader or ErrAmbiguous right after
// an election; both are safe to retry here: the writes are idempotent).
func (c *metaComponent) register(ctx context.Context, srv *meta.Server, self schema.Node) (*schema.Registration, error) {
	rctx, cancel := context.WithTimeout(ctx, c.wait)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(rctx, 5*time.Second)
		reg, err := schema.Register(actx, srv, self, c.ttl, c.log)
		acancel()
		if err == nil {
			return reg, nil
		}
		if rctx.Err() != nil {
			return nil, err
		}
		c.log.Warn("registering in meta; retrying", "err", err)
		select {
		case <-rctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *metaComponent) Stop(ctx context.Context) error {
	c.mu.Lock()
	reg := c.reg
	c.reg = nil
	c.mu.Unlock()
	var errs []error
	if reg != nil {
		// Revoke the lease so the node shows down at once; without a
		// quorum this cannot succeed, and the lease then expires.
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := reg.Close(rctx); err != nil {
			c.log.Warn("could not revoke this node's lease in meta; it expires by itself", "err", err)
		}
		cancel()
	}
	srv := c.srv.Swap(nil)
	for _, s := range metaServices {
		c.grpc.setServing(s, false)
	}
	if srv != nil {
		errs = append(errs, srv.Stop(ctx))
	}
	c.grpc.late.detach(metaServices...)
	return errors.Join(errs...)
}

// selfNode describes this node for its registration.
func (n *Node) selfNode() schema.Node {
	sn := schema.Node{ID: n.cfg.NodeID, Roles: n.Roles(), Version: version.Get().Version, StartedAt: time.Now().UTC()}
	if vs, err := n.cfg.Voters(); err == nil {
		for _, v := range vs {
			if v.ID == n.cfg.NodeID {
				sn.Addr = v.Addr
			}
		}
	}
	if a := n.AdminAddr(); a != nil {
		sn.AdminAddr = a.String()
	}
	if a := n.GRPCAddr(); a != nil {
		sn.GRPCAddr = a.String()
	}
	return sn
}
