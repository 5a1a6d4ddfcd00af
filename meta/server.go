package meta

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// Server is one meta node: a Raft member with the state machine, serving the
// KV in process and, once registered, over gRPC. It implements KV.
type Server struct {
	opts Options
	log  *slog.Logger

	store   *LogStore
	snaps   raft.SnapshotStore
	trans   raft.Transport
	stream  *streamLayer // nil when Options.Transport is set
	fsm     *fsm
	lessor  *lessor
	metrics *serverMetrics

	raft     *raft.Raft
	raftMu   sync.RWMutex // held (read) while handing Raft a request: see toRaft
	notifyCh chan bool
	started  atomic.Bool
	stopped  atomic.Bool
	stopCh   chan struct{}
	wg       sync.WaitGroup

	leadMu    sync.Mutex
	leadEpoch uint64
	ready     atomic.Bool // leader whose FSM has applied every earlier term

	batcher *writeBatcher
	reads   *readBarrier

	peerMu      sync.Mutex
	peers       map[string]*grpc.ClientConn
	peerStreams map[string]*batchStream // Batch streams to the leader, by address
}

var _ KV = (*Server)(nil)

// Open opens the node's Raft store and snapshots and prepares the transport.
// Raft does not run until Start; register the gRPC services (Register) in
// between.
func Open(opts Options) (*Server, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: opts.Logger.With("component", "meta"), stopCh: make(chan struct{}),
		notifyCh: make(chan bool, 16), peers: map[string]*grpc.ClientConn{}, peerStreams: map[string]*batchStream{}}
	s.batcher = newWriteBatcher(s)
	s.reads = &readBarrier{verify: s.linearize}
	s.lessor = newLessor(opts.Now)
	s.fsm = newFSM(opts.WatchHistory, s.lessor)
	var err error
	if s.store, err = OpenLogStore(opts.FS, opts.FS.PathJoin(opts.Dir, "raft"), s.log); err != nil {
		return nil, err
	}
	s.snaps = opts.Snapshots
	if s.snaps == nil {
		s.snaps, err = raft.NewFileSnapshotStoreWithLogger(opts.Dir, opts.SnapshotRetain, s.hclog("raft-snapshots"))
		if err != nil {
			s.store.Close()
			return nil, fmt.Errorf("meta: snapshot store: %w", err)
		}
	}
	s.trans = opts.Transport
	if s.trans == nil {
		s.stream = newStreamLayer(opts.self().Addr, opts.DialOptions)
		s.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: s.stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: s.hclog("raft-net"),
		})
	}
	s.metrics = newServerMetrics(s)
	return s, nil
}

// Register registers the Meta service, and the Raft transport service when
// Raft rides the gRPC server, with reg (the node's inner gRPC server).
func (s *Server) Register(reg grpc.ServiceRegistrar) {
	metav1.RegisterMetaServer(reg, &grpcService{s: s})
	if s.stream != nil {
		metav1.RegisterRaftTransportServer(reg, s.stream)
	}
}

// Start bootstraps the cluster if this node has no Raft state (every voter
// bootstraps with the same configuration), then runs Raft. It does not wait
// for a leader: see WaitLeader.
func (s *Server) Start(ctx context.Context) error {
	if s.stopped.Load() {
		return ErrStopped
	}
	cfg := s.raftConfig()
	has, err := raft.HasExistingState(s.store, s.store, s.snaps)
	if err != nil {
		return fmt.Errorf("meta: reading raft state: %w", err)
	}
	if !has {
		var conf raft.Configuration
		for _, v := range s.opts.Voters {
			conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: serverID(v.ID), Address: raft.ServerAddress(v.Addr)})
		}
		if err := raft.BootstrapCluster(cfg, s.store, s.store, s.snaps, s.trans, conf); err != nil {
			return fmt.Errorf("meta: bootstrapping: %w", err)
		}
		s.log.Info("bootstrapped a new meta cluster", "voters", fmt.Sprint(s.opts.Voters))
	}
	// Raft reads back the entries it has just stored to replicate them (and
	// followers to apply them): the cache serves those from memory.
	logs, err := raft.NewLogCache(logCacheSize, s.store)
	if err != nil {
		return fmt.Errorf("meta: log cache: %w", err)
	}
	r, err := raft.NewRaft(cfg, s.fsm, logs, s.store, s.snaps, s.trans)
	if err != nil {
		return fmt.Errorf("meta: starting raft: %w", err)
	}
	s.raft = r
	if has {
		s.checkConfiguration()
	}
	s.started.Store(true)
	s.wg.Add(3)
	go s.leadershipLoop()
	go s.leaseLoop()
	go s.batcher.loop()
	return nil
}

// logCacheSize is how many of the latest Raft log entries are kept in memory
// (each is one write batch; see Options.WriteBatchBytes).
const logCacheSize = 256

func (s *Server) raftConfig() *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = serverID(s.opts.ID)
	c.HeartbeatTimeout = s.opts.HeartbeatTimeout
	c.ElectionTimeout = s.opts.ElectionTimeout
	c.LeaderLeaseTimeout = s.opts.LeaderLeaseTimeout
	c.CommitTimeout = s.opts.CommitTimeout
	c.MaxAppendEntries = s.opts.MaxAppendEntries
	c.BatchApplyCh = true
	c.SnapshotInterval = s.opts.SnapshotInterval
	c.SnapshotThreshold = s.opts.SnapshotThreshold
	c.TrailingLogs = s.opts.TrailingLogs
	c.NotifyCh = s.notifyCh
	c.Logger = s.hclog("raft")
	return c
}

// checkConfiguration warns when the voters in the Raft log differ from
// Options.Voters (membership changes are not supported yet).
func (s *Server) checkConfiguration() {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	var have []string
	for _, sv := range f.Configuration().Servers {
		have = append(have, string(sv.ID)+"@"+string(sv.Address))
	}
	var want []string
	for _, v := range s.opts.Voters {
		want = append(want, v.String())
	}
	if strings.Join(sortedCopy(have), ",") != strings.Join(sortedCopy(want), ",") {
		s.log.Warn("meta_addrs differ from the voters in the Raft log; the log wins (membership changes are not supported yet)",
			"log", have, "meta_addrs", want)
	}
}

// Stop stops Raft and closes the stores. Requests in flight fail with
// ErrStopped (or ErrAmbiguous for writes already proposed). No wait of the
// server's own goroutines outlives Stop (see futureErr); if Raft or those
// goroutines still have not finished when ctx ends, Stop returns ctx's
// error without closing the stores.
func (s *Server) Stop(ctx context.Context) error {
	if !s.stopped.CompareAndSwap(false, true) {
		return nil
	}
	close(s.stopCh)
	var errs []error
	if s.stream != nil {
		s.stream.closeConns() // end dials to peers that are down
	}
	if s.raft != nil {
		// No request reaches Raft from now on (toRaft): let those being
		// handed over land first — for a moment at most, as a hand-over
		// may wait for room in Raft's queues (Shutdown ends that wait).
		handed := make(chan struct{})
		go func() {
			s.raftMu.Lock()
			//lint:ignore SA2001 an empty critical section: a barrier behind the hand-overs
			s.raftMu.Unlock()
			close(handed)
		}()
		select {
		case <-handed:
		case <-time.After(handOverWait):
		case <-ctx.Done():
		}
		done := make(chan error, 1)
		go func() { done <- s.raft.Shutdown().Error() }()
		select {
		case err := <-done:
			errs = append(errs, err)
		case <-ctx.Done():
			return fmt.Errorf("meta: stopping raft: %w", ctx.Err())
		}
	}
	waited := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-ctx.Done():
		return fmt.Errorf("meta: stopping: %w", ctx.Err())
	}
	if c, ok := s.trans.(io.Closer); ok {
		errs = append(errs, c.Close())
	}
	s.peerMu.Lock()
	for _, bs := range s.peerStreams {
		bs.close()
	}
	s.peerStreams = nil
	for _, cc := range s.peers {
		cc.Close()
	}
	s.peers = nil
	s.peerMu.Unlock()
	errs = append(errs, s.store.Close())
	return errors.Join(errs...)
}

// WaitLeader waits until the cluster has a leader that is ready to serve
// (this node knows it), and returns its id.
func (s *Server) WaitLeader(ctx context.Context) (uint64, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if id, _ := s.Leader(); id != 0 && (id != s.opts.ID || s.ready.Load()) {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.stopCh:
			return 0, ErrStopped
		case <-t.C:
		}
	}
}

// Leader returns the leader this node knows of (0, "" when none).
func (s *Server) Leader() (uint64, string) {
	if s.raft == nil {
		return 0, ""
	}
	addr, id := s.raft.LeaderWithID()
	n, _ := strconv.ParseUint(string(id), 10, 64)
	return n, string(addr)
}

// ID returns this node's id.
func (s *Server) ID() uint64 { return s.opts.ID }

// IsLeader reports whether this node is the leader and ready to serve.
func (s *Server) IsLeader() bool { return s.ready.Load() && s.raft.State() == raft.Leader }

// Snapshot takes a snapshot now (and truncates the log to TrailingLogs).
func (s *Server) Snapshot() error {
	if !s.started.Load() {
		return ErrStopped
	}
	var f raft.Future
	if !s.toRaft(func() { f = s.raft.Snapshot() }) {
		return ErrStopped
	}
	return s.futureErr(f)
}

// Revision returns this node's current revision.
func (s *Server) Revision() uint64 { return s.fsm.revision() }

// Status describes this node's view of the cluster.
func (s *Server) Status() *metav1.StatusResponse {
	st := &metav1.StatusResponse{Id: s.opts.ID, Addr: s.opts.self().Addr, State: "Shutdown", Revision: s.fsm.revision()}
	if s.raft == nil || s.stopped.Load() {
		return st
	}
	st.State = s.raft.State().String()
	st.LeaderId, st.LeaderAddr = s.Leader()
	st.Term = s.raft.CurrentTerm()
	st.AppliedIndex = s.raft.AppliedIndex()
	if f := s.raft.GetConfiguration(); s.futureErr(f) == nil {
		for _, sv := range f.Configuration().Servers {
			id, _ := strconv.ParseUint(string(sv.ID), 10, 64)
			st.Members = append(st.Members, &metav1.Member{Id: id, Addr: string(sv.Address), Suffrage: sv.Suffrage.String()})
		}
	}
	return st
}

// leadershipLoop follows NotifyCh. On becoming leader it applies a barrier
// (the FSM then holds every entry of earlier terms) and only then serves
// linearizable reads and keep-alives, with a fresh TTL for every lease.
func (s *Server) leadershipLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stopCh:
			return
		case leader := <-s.notifyCh:
			s.leadMu.Lock()
			s.leadEpoch++
			epoch := s.leadEpoch
			s.ready.Store(false)
			s.lessor.demote()
			s.leadMu.Unlock()
			s.metrics.leader(leader)
			if leader {
				s.wg.Add(1)
				go s.promote(epoch)
			}
		}
	}
}

func (s *Server) promote(epoch uint64) {
	defer s.wg.Done()
	var f raft.Future
	if !s.toRaft(func() { f = s.raft.Barrier(s.opts.ApplyTimeout) }) {
		return
	}
	if err := s.futureErr(f); err != nil {
		if !errors.Is(err, ErrStopped) {
			s.log.Warn("meta: leadership barrier failed", "err", err)
		}
		return
	}
	s.leadMu.Lock()
	defer s.leadMu.Unlock()
	if s.leadEpoch != epoch || s.raft.State() != raft.Leader {
		return
	}
	s.lessor.promote()
	s.ready.Store(true)
	s.log.Info("meta: this node is the leader", "id", s.opts.ID, "term", s.raft.CurrentTerm())
}

// leaseLoop expires leases on the leader, through the log.
func (s *Server) leaseLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.LeaseCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stopCh:
			return
		case <-t.C:
		}
		ids := s.lessor.expired()
		if len(ids) == 0 {
			continue
		}
		futures := make([]raft.ApplyFuture, len(ids))
		if !s.toRaft(func() {
			for i, id := range ids {
				data, _ := proto.Marshal(&metav1.Command{Op: &metav1.Command_LeaseRevoke{LeaseRevoke: &metav1.LeaseRevokeOp{Id: id, Expired: true}}})
				futures[i] = s.raft.Apply(data, s.opts.ApplyTimeout)
			}
		}) {
			return
		}
		for i, f := range futures {
			if err := s.futureErr(f); err != nil {
				s.lessor.unpend(ids[i])
				continue
			}
			if r, ok := f.Response().(*applyResult); ok && r.err == nil {
				s.metrics.leaseExpired.Inc()
				s.log.Info("meta: lease expired", "lease", ids[i])
			}
		}
	}
}

// ---- requests ----

// noForwardKey in a request's metadata asks a follower not to forward it but
// to answer NOT_LEADER with the leader's address: set on forwarded requests
// (no loops while leadership moves) and by Client (which then talks to the
// leader directly).
const noForwardKey = "quire-meta-no-forward"

// route decides where a leader-only request goes: here (nil, nil), to the
// leader's Meta service, or nowhere (ErrNotLeader).
func (s *Server) route(forward bool) (metav1.MetaClient, error) {
	if !s.started.Load() || s.stopped.Load() {
		return nil, ErrStopped
	}
	if s.raft.State() == raft.Leader {
		return nil, nil
	}
	id, addr := s.Leader()
	if addr == "" || id == s.opts.ID {
		return nil, &NotLeaderError{}
	}
	if !forward {
		return nil, &NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	cc, err := s.peer(addr)
	if err != nil {
		return nil, &NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	s.metrics.forwarded.Inc()
	return metav1.NewMetaClient(cc), nil
}

func (s *Server) peer(addr string) (*grpc.ClientConn, error) {
	s.peerMu.Lock()
	defer s.peerMu.Unlock()
	if s.peers == nil {
		return nil, ErrStopped
	}
	if cc := s.peers[addr]; cc != nil {
		return cc, nil
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, s.opts.DialOptions...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	s.peers[addr] = cc
	return cc, nil
}

func forwardCtx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, noForwardKey, "1")
}

// forwardErr classifies the error of a forwarded request: a transport
// failure is ErrNotLeader for a read (nothing happened) and ErrAmbiguous
// for a write (the leader may have applied it).
func forwardErr(err error, write bool) error {
	if err == nil {
		return nil
	}
	e := fromStatus(err)
	if e != err || errors.Is(e, context.Canceled) || errors.Is(e, context.DeadlineExceeded) {
		return e
	}
	if write {
		return fmt.Errorf("%w: forwarding to the leader: %v", ErrAmbiguous, err)
	}
	return fmt.Errorf("%w: forwarding to the leader: %v", ErrNotLeader, err)
}

// linearize returns once a read served from this node's state will see
// every write acknowledged before it was called: this node is the ready
// leader and a quorum still follows it.
func (s *Server) linearize() error {
	if !s.ready.Load() {
		return s.notLeader()
	}
	var f raft.Future
	if !s.toRaft(func() { f = s.raft.VerifyLeader() }) {
		return ErrStopped
	}
	if err := s.futureErr(f); err != nil {
		if errors.Is(err, ErrStopped) {
			return err
		}
		return s.notLeader()
	}
	return nil
}

// handOverWait bounds Stop's wait for requests being handed to Raft.
const handOverWait = time.Second

// toRaft runs hand, which hands Raft a request (Apply, Barrier,
// VerifyLeader, Snapshot), unless the server is stopping; it reports
// whether it ran. Stop shuts Raft down only after the requests being handed
// over: Raft never resolves a request handed to it after it shut down (its
// request channels are buffered, and a send may win over the shutdown), so
// a wait on one — futureErr's goroutine, a proposal's — would never end.
func (s *Server) toRaft(hand func()) bool {
	s.raftMu.RLock()
	defer s.raftMu.RUnlock()
	if s.stopped.Load() {
		return false
	}
	hand()
	return true
}

// futureErr waits for a Raft future, or returns ErrStopped once the server
// stops: Raft never resolves a future still queued (in its apply channel,
// or committed but not yet handed to the FSM) when it shuts down, and Stop
// waits for the goroutines that wait here. The goroutine left waiting then
// ends if Raft ever resolves the future (toRaft keeps requests from
// reaching a Raft that has shut down; one still queued when it shuts down
// is left).
func (s *Server) futureErr(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-s.stopCh:
		select {
		case err := <-done:
			return err
		default:
			return ErrStopped
		}
	}
}

func (s *Server) notLeader() error {
	id, addr := s.Leader()
	if id == s.opts.ID {
		return &NotLeaderError{}
	}
	return &NotLeaderError{LeaderID: id, LeaderAddr: addr}
}

func (s *Server) checkKey(key string) error {
	if key == "" || len(key) > s.opts.MaxKeySize || !utf8.ValidString(key) {
		return fmt.Errorf("%w: key must be 1..%d bytes of UTF-8", ErrInvalid, s.opts.MaxKeySize)
	}
	return nil
}

func (s *Server) apply(ctx context.Context, cmd *metav1.Command) (*applyResult, error) {
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	timeout := s.opts.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	start := time.Now()
	var f raft.ApplyFuture
	if !s.toRaft(func() { f = s.raft.Apply(data, timeout) }) {
		return nil, ErrStopped
	}
	if err := s.futureErr(f); err != nil {
		if errors.Is(err, ErrStopped) {
			return nil, fmt.Errorf("%w: server stopped with the write pending", ErrAmbiguous)
		}
		return nil, s.applyErr(err)
	}
	s.metrics.apply.Observe(time.Since(start).Seconds())
	r := f.Response().(*applyResult)
	return r, r.err
}

func (s *Server) doGet(ctx context.Context, req *metav1.GetRequest, forward bool) (*metav1.GetResponse, error) {
	r, err := s.serveOne(ctx, &metav1.BatchOp{Op: &metav1.BatchOp_Get{Get: req}}, forward)
	if err != nil {
		return nil, err
	}
	return r.GetGet(), nil
}

func (s *Server) doList(ctx context.Context, req *metav1.ListRequest, forward bool) (*metav1.ListResponse, error) {
	if !req.Stale {
		c, err := s.route(forward)
		if err != nil {
			return nil, err
		}
		if c != nil {
			resp, err := c.List(forwardCtx(ctx), req)
			return resp, forwardErr(err, false)
		}
		if err := s.linearize(); err != nil {
			return nil, err
		}
	} else if !s.started.Load() || s.stopped.Load() {
		return nil, ErrStopped
	}
	limit := s.opts.ListLimit
	if req.Limit > 0 && int(req.Limit) < limit {
		limit = int(req.Limit)
	}
	kvs, more, rev := s.fsm.list(req.Prefix, req.StartAfter, limit)
	return &metav1.ListResponse{Kvs: kvs, More: more, Revision: rev}, nil
}

func (s *Server) doPut(ctx context.Context, req *metav1.PutRequest, forward bool) (*metav1.PutResponse, error) {
	r, err := s.serveOne(ctx, &metav1.BatchOp{Op: &metav1.BatchOp_Put{Put: req}}, forward)
	if err != nil {
		return nil, err
	}
	return r.GetPut(), nil
}

func (s *Server) doDelete(ctx context.Context, req *metav1.DeleteRequest, forward bool) (*metav1.DeleteResponse, error) {
	r, err := s.serveOne(ctx, &metav1.BatchOp{Op: &metav1.BatchOp_Delete{Delete: req}}, forward)
	if err != nil {
		return nil, err
	}
	return r.GetDelete(), nil
}

func (s *Server) doLeaseGrant(ctx context.Context, req *metav1.LeaseGrantRequest, forward bool) (*metav1.LeaseGrantResponse, error) {
	ttl := time.Duration(req.TtlMs) * time.Millisecond
	if ttl < s.opts.MinLeaseTTL || ttl > s.opts.MaxLeaseTTL {
		return nil, fmt.Errorf("%w: lease TTL %v outside [%v, %v]", ErrInvalid, ttl, s.opts.MinLeaseTTL, s.opts.MaxLeaseTTL)
	}
	c, err := s.route(forward)
	if err != nil {
		return nil, err
	}
	if c != nil {
		resp, err := c.LeaseGrant(forwardCtx(ctx), req)
		return resp, forwardErr(err, true)
	}
	r, err := s.apply(ctx, &metav1.Command{Op: &metav1.Command_LeaseGrant{LeaseGrant: &metav1.LeaseGrantOp{TtlMs: req.TtlMs}}})
	if err != nil {
		return nil, err
	}
	return &metav1.LeaseGrantResponse{Id: r.lease, TtlMs: req.TtlMs}, nil
}

func (s *Server) doLeaseKeepAlive(ctx context.Context, req *metav1.LeaseKeepAliveRequest, forward bool) (*metav1.LeaseKeepAliveResponse, error) {
	c, err := s.route(forward)
	if err != nil {
		return nil, err
	}
	if c != nil {
		resp, err := c.LeaseKeepAlive(forwardCtx(ctx), req)
		return resp, forwardErr(err, false)
	}
	ttl, err := s.lessor.keepAlive(req.Id)
	if errors.Is(err, ErrNotLeader) {
		return nil, s.notLeader()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %d", err, req.Id)
	}
	// Acknowledge only while a quorum follows this leader: a deposed leader
	// must not extend a lease the new leader does not know was renewed.
	if err := s.reads.wait(ctx); err != nil {
		return nil, err
	}
	return &metav1.LeaseKeepAliveResponse{TtlMs: ttl.Milliseconds()}, nil
}

func (s *Server) doLeaseRevoke(ctx context.Context, req *metav1.LeaseRevokeRequest, forward bool) (*metav1.LeaseRevokeResponse, error) {
	c, err := s.route(forward)
	if err != nil {
		return nil, err
	}
	if c != nil {
		resp, err := c.LeaseRevoke(forwardCtx(ctx), req)
		return resp, forwardErr(err, true)
	}
	r, err := s.apply(ctx, &metav1.Command{Op: &metav1.Command_LeaseRevoke{LeaseRevoke: &metav1.LeaseRevokeOp{Id: req.Id}}})
	if err != nil {
		return nil, err
	}
	return &metav1.LeaseRevokeResponse{Revision: r.rev}, nil
}

// ---- KV ----

// Get implements KV.
func (s *Server) Get(ctx context.Context, key string, opts ...ReadOption) (KeyValue, error) {
	o := readOptions(opts)
	resp, err := s.doGet(ctx, &metav1.GetRequest{Key: key, Stale: o.stale}, true)
	if err != nil {
		return KeyValue{}, err
	}
	if !resp.Found {
		return KeyValue{}, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return kvFromProto(resp.Kv), nil
}

// List implements KV.
func (s *Server) List(ctx context.Context, prefix string, o ListOptions) (ListResult, error) {
	resp, err := s.doList(ctx, &metav1.ListRequest{Prefix: prefix, StartAfter: o.StartAfter, Limit: uint32(max(o.Limit, 0)), Stale: o.Stale}, true)
	if err != nil {
		return ListResult{}, err
	}
	return listFromProto(resp), nil
}

func listFromProto(resp *metav1.ListResponse) ListResult {
	res := ListResult{More: resp.More, Revision: resp.Revision, KVs: make([]KeyValue, len(resp.Kvs))}
	for i, kv := range resp.Kvs {
		res.KVs[i] = kvFromProto(kv)
	}
	return res
}

// Put implements KV.
func (s *Server) Put(ctx context.Context, key string, value []byte, opts ...WriteOption) (KeyValue, error) {
	o := writeOptions(opts)
	resp, err := s.doPut(ctx, &metav1.PutRequest{Key: key, Value: append([]byte(nil), value...), Lease: uint64(o.lease),
		CheckVersion: o.check, ExpectVersion: o.version}, true)
	if err != nil {
		return KeyValue{}, err
	}
	return kvFromProto(resp.Kv), nil
}

// Delete implements KV.
func (s *Server) Delete(ctx context.Context, key string, opts ...WriteOption) (uint64, error) {
	o := writeOptions(opts)
	resp, err := s.doDelete(ctx, &metav1.DeleteRequest{Key: key, CheckVersion: o.check, ExpectVersion: o.version}, true)
	if err != nil {
		return 0, err
	}
	return resp.Revision, nil
}

// Watch implements KV. It is served from this node's history (followers
// apply the same log, so they deliver the same events at the same
// revisions).
func (s *Server) Watch(ctx context.Context, prefix string, from uint64) <-chan WatchResponse {
	ch := make(chan WatchResponse, 16)
	go func() {
		defer close(ch)
		if !s.started.Load() || s.stopped.Load() {
			ch <- WatchResponse{Err: ErrStopped}
			return
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-s.stopCh:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := watchLoop(ctx, s.fsm.hist, prefix, from, func(evs []*metav1.Event, upto uint64) error {
			r := WatchResponse{Revision: upto, Events: make([]Event, len(evs))}
			for i, e := range evs {
				r.Events[i] = eventFromProto(e)
			}
			select {
			case ch <- r:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		if s.stopped.Load() && ctx.Err() != nil {
			err = ErrStopped
		}
		select {
		case ch <- WatchResponse{Err: err}:
		case <-time.After(time.Second):
		}
	}()
	return ch
}

// Grant implements KV.
func (s *Server) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	resp, err := s.doLeaseGrant(ctx, &metav1.LeaseGrantRequest{TtlMs: ttl.Milliseconds()}, true)
	if err != nil {
		return 0, err
	}
	return LeaseID(resp.Id), nil
}

// KeepAlive implements KV.
func (s *Server) KeepAlive(ctx context.Context, id LeaseID) (time.Duration, error) {
	resp, err := s.doLeaseKeepAlive(ctx, &metav1.LeaseKeepAliveRequest{Id: uint64(id)}, true)
	if err != nil {
		return 0, err
	}
	return time.Duration(resp.TtlMs) * time.Millisecond, nil
}

// Revoke implements KV.
func (s *Server) Revoke(ctx context.Context, id LeaseID) error {
	_, err := s.doLeaseRevoke(ctx, &metav1.LeaseRevokeRequest{Id: uint64(id)}, true)
	return err
}

// ---- helpers ----

func serverID(id uint64) raft.ServerID { return raft.ServerID(strconv.FormatUint(id, 10)) }

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// hclog adapts hashicorp's logger to the server's slog.Logger.
func (s *Server) hclog(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:        name,
		Level:       hclog.LevelFromString(s.opts.RaftLogLevel),
		Output:      slogWriter{s.log},
		DisableTime: true,
	})
}

type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	lvl := slog.LevelInfo
	switch {
	case strings.HasPrefix(msg, "[ERROR]"):
		lvl = slog.LevelError
	case strings.HasPrefix(msg, "[WARN]"):
		lvl = slog.LevelWarn
	case strings.HasPrefix(msg, "[DEBUG]"), strings.HasPrefix(msg, "[TRACE]"):
		lvl = slog.LevelDebug
	}
	w.log.Log(context.Background(), lvl, msg)
	return len(p), nil
}
