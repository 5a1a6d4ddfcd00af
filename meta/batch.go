package meta

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// Coalescing on the leader (see the package doc, "Batching").
//
// writeBatcher gathers the puts and deletes of concurrent requests — unary
// calls, Batch streams, in-process calls, forwarded batches — into one Raft
// entry (a CommandBatch), applied in order by the FSM with one result per
// op. At most Options.WriteBatchInflight entries are in flight; while they
// are, new writes queue and leave together as the next entry, so the batch
// size follows the load and a lone write goes out at once.
type writeBatcher struct {
	s       *Server
	maxOps  int
	maxSize int
	slots   chan struct{} // one token per entry in flight
	kick    chan struct{}

	mu    sync.Mutex
	queue []*pendingWrite
}

// pendingWrite is one put or delete waiting for its entry to commit. The
// writes of one request share a writeGroup.
type pendingWrite struct {
	op   *metav1.BatchOp // a put or a delete
	size int
	grp  *writeGroup
	res  *applyResult
	err  error
	done atomic.Bool // res and err are set
}

// writeGroup is the writes of one request: wait returns when all of them
// are resolved.
type writeGroup struct {
	left   atomic.Int32
	done   chan struct{}
	writes []pendingWrite
}

func newWriteGroup(n int) *writeGroup {
	return &writeGroup{done: make(chan struct{}), writes: make([]pendingWrite, 0, n)}
}

// add adds a write to the group (before submitting it).
func (g *writeGroup) add(op *metav1.BatchOp) {
	g.writes = append(g.writes, pendingWrite{op: op, size: opSize(op), grp: g})
	g.left.Add(1)
}

// resolve sets a write's outcome.
func (w *pendingWrite) resolve(res *applyResult, err error) {
	w.res, w.err = res, err
	w.done.Store(true)
	if w.grp.left.Add(-1) == 0 {
		close(w.grp.done)
	}
}

func newWriteBatcher(s *Server) *writeBatcher {
	return &writeBatcher{s: s, maxOps: s.opts.WriteBatchOps, maxSize: s.opts.WriteBatchBytes,
		slots: make(chan struct{}, s.opts.WriteBatchInflight), kick: make(chan struct{}, 1)}
}

// submit queues the group's writes as one run (they stay in order, and in
// one entry unless it fills up); wait for them with wait.
func (b *writeBatcher) submit(g *writeGroup) {
	if len(g.writes) == 0 {
		close(g.done)
		return
	}
	b.mu.Lock()
	for i := range g.writes {
		b.queue = append(b.queue, &g.writes[i])
	}
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// wait waits until every write of the group is resolved. It does not give
// up when ctx ends: the writes have been proposed and their outcome is
// coming (raft resolves a future on commit or leadership loss) — unless the
// server stops: a future still in Raft's apply queue at shutdown is never
// resolved, and the outcome of a write not resolved by then is unknown.
func (g *writeGroup) wait(stop <-chan struct{}) {
	select {
	case <-g.done:
	case <-stop:
	}
}

// result returns the write's result once its group's wait returned.
func (w *pendingWrite) result() (*applyResult, error) {
	if !w.done.Load() {
		return nil, fmt.Errorf("%w: server stopped with the write pending", ErrAmbiguous)
	}
	if w.err != nil {
		return nil, w.err
	}
	return w.res, w.res.err
}

// loop proposes queued writes while an in-flight slot is free.
func (b *writeBatcher) loop() {
	defer b.s.wg.Done()
	for {
		select {
		case <-b.s.stopCh:
			b.failQueued()
			return
		case <-b.kick:
		}
		for {
			select {
			case b.slots <- struct{}{}:
			case <-b.s.stopCh:
				b.failQueued()
				return
			}
			batch := b.take()
			if len(batch) == 0 {
				<-b.slots
				break
			}
			b.propose(batch)
		}
	}
}

// take removes the next batch from the queue: up to maxOps writes and
// about maxSize bytes (at least one write).
func (b *writeBatcher) take() []*pendingWrite {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, size := 0, 0
	for n < len(b.queue) && n < b.maxOps && (n == 0 || size+b.queue[n].size <= b.maxSize) {
		size += b.queue[n].size
		n++
	}
	batch := b.queue[:n:n]
	if n == len(b.queue) {
		b.queue = nil
	} else {
		b.queue = b.queue[n:]
	}
	return batch
}

func (b *writeBatcher) failQueued() {
	b.mu.Lock()
	q := b.queue
	b.queue = nil
	b.mu.Unlock()
	for _, w := range q {
		w.resolve(nil, ErrStopped)
	}
}

// propose applies one entry and resolves its writes when it commits. The
// slot taken by loop is released then.
func (b *writeBatcher) propose(batch []*pendingWrite) {
	data := encodeBatch(batch)
	b.s.metrics.batchOps.Observe(float64(len(batch)))
	start := time.Now()
	var f raft.ApplyFuture
	if !b.s.toRaft(func() { f = b.s.raft.Apply(data, b.s.opts.ApplyTimeout) }) {
		<-b.slots
		b.resolve(batch, nil, ErrStopped) // not proposed
		return
	}
	// Not in s.wg: a future enqueued just before Raft shut down is never
	// resolved (see writeGroup.wait), and Stop must not wait for it.
	go func() {
		defer func() { <-b.slots }()
		if err := f.Error(); err != nil {
			b.resolve(batch, nil, b.s.applyErr(err))
			return
		}
		b.s.metrics.apply.Observe(time.Since(start).Seconds())
		b.resolve(batch, f.Response().(*applyResult), nil)
	}()
}

func (b *writeBatcher) resolve(batch []*pendingWrite, r *applyResult, err error) {
	for i, w := range batch {
		switch {
		case err != nil:
			w.resolve(nil, err)
		case r.err != nil || len(r.batch) != len(batch): // the entry as a whole was rejected
			w.resolve(&applyResult{rev: r.rev, err: r.err}, nil)
		default:
			w.resolve(&r.batch[i], nil)
		}
	}
}

// applyErr classifies the error of a proposed entry: not proposed (retry
// safe) or outcome unknown.
func (s *Server) applyErr(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrEnqueueTimeout):
		return s.notLeader()
	default: // leadership lost or shutdown after proposing: it may commit
		return fmt.Errorf("%w: %v", ErrAmbiguous, err)
	}
}

// readBarrier amortises the leadership check of linearizable reads (and
// keep-alives): a reader joins the next round, one VerifyLeader (after the
// ready check) serves every reader of the round. A round starts after all
// its readers arrived, so its confirmation covers each of them: every write
// acknowledged before a read arrived is applied on this leader (Apply
// resolves after the FSM applied the entry), and the leader was still the
// leader after the read arrived.
type readBarrier struct {
	verify func() error

	mu      sync.Mutex
	running bool
	waiters []chan error
}

// wait returns nil once a round that started after the call confirmed
// leadership.
func (b *readBarrier) wait(ctx context.Context) error {
	ch := make(chan error, 1)
	b.mu.Lock()
	b.waiters = append(b.waiters, ch)
	if !b.running {
		b.running = true
		go b.run()
	}
	b.mu.Unlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *readBarrier) run() {
	for {
		b.mu.Lock()
		ws := b.waiters
		b.waiters = nil
		if len(ws) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		err := b.verify()
		for _, w := range ws {
			w <- err
		}
	}
}

// ---- serving batches ----

// opSize estimates an op's share of a message or an entry.
func opSize(op *metav1.BatchOp) int {
	switch x := op.Op.(type) {
	case *metav1.BatchOp_Put:
		return len(x.Put.Key) + len(x.Put.Value) + 16
	case *metav1.BatchOp_Delete:
		return len(x.Delete.Key) + 16
	case *metav1.BatchOp_Get:
		return len(x.Get.Key) + 8
	}
	return 8
}

func isWrite(op *metav1.BatchOp) bool { return op.GetGet() == nil }

func (s *Server) checkOp(op *metav1.BatchOp) error {
	switch x := op.Op.(type) {
	case *metav1.BatchOp_Get:
		return s.checkKey(x.Get.Key)
	case *metav1.BatchOp_Put:
		if err := s.checkKey(x.Put.Key); err != nil {
			return err
		}
		if len(x.Put.Value) > s.opts.MaxValueSize {
			return fmt.Errorf("%w: value of %d bytes exceeds %d", ErrInvalid, len(x.Put.Value), s.opts.MaxValueSize)
		}
		return nil
	case *metav1.BatchOp_Delete:
		return s.checkKey(x.Delete.Key)
	}
	return fmt.Errorf("%w: empty batch op", ErrInvalid)
}

// serveOps serves the ops of one batch: stale reads from this node's state,
// the rest (writes, linearizable reads) on the leader — here, with the
// writes in the next Raft entry and one leadership check for the reads, or
// forwarded to the leader as one batch. Each op gets a result or an error.
func (s *Server) serveOps(ctx context.Context, ops []*metav1.BatchOp, forward bool) ([]*metav1.BatchResult, []error) {
	res := make([]*metav1.BatchResult, len(ops))
	errs := make([]error, len(ops))
	running := s.started.Load() && !s.stopped.Load()
	var lead []int // ops for the leader
	for i, op := range ops {
		switch err := s.checkOp(op); {
		case err != nil:
			errs[i] = err
		case !running:
			errs[i] = ErrStopped
		case op.GetGet() != nil && op.GetGet().Stale:
			res[i] = s.readOne(op.GetGet())
		default:
			lead = append(lead, i)
		}
	}
	if len(lead) == 0 {
		return res, errs
	}
	leader, err := s.routeOps(forward)
	switch {
	case err != nil:
		for _, i := range lead {
			errs[i] = err
		}
	case leader != nil:
		s.forwardOps(ctx, leader, ops, lead, res, errs)
	default:
		s.serveLeaderOps(ctx, ops, lead, res, errs)
	}
	return res, errs
}

func (s *Server) readOne(g *metav1.GetRequest) *metav1.BatchResult {
	kv, rev := s.fsm.read(g.Key)
	return &metav1.BatchResult{Result: &metav1.BatchResult_Get{Get: &metav1.GetResponse{Found: kv != nil, Kv: kv, Revision: rev}}}
}

// serveLeaderOps runs ops[lead] on this node, the leader. It reorders lead
// (its own slice from serveOps): the writes first, in order, then the reads.
func (s *Server) serveLeaderOps(ctx context.Context, ops []*metav1.BatchOp, lead []int, res []*metav1.BatchResult, errs []error) {
	nw := 0
	for j, i := range lead {
		if isWrite(ops[i]) {
			lead[nw], lead[j] = i, lead[nw]
			nw++
		}
	}
	writes, reads := lead[:nw], lead[nw:]
	g := newWriteGroup(nw)
	for _, i := range writes {
		g.add(ops[i])
	}
	s.batcher.submit(g)
	if len(reads) > 0 {
		err := s.reads.wait(ctx)
		for _, i := range reads {
			if err != nil {
				errs[i] = err
			} else {
				res[i] = s.readOne(ops[i].GetGet())
			}
		}
	}
	if nw == 0 {
		return
	}
	g.wait(s.stopCh)
	for k, i := range writes {
		r, err := g.writes[k].result()
		switch {
		case err != nil:
			errs[i] = err
		case ops[i].GetPut() != nil:
			res[i] = &metav1.BatchResult{Result: &metav1.BatchResult_Put{Put: &metav1.PutResponse{Kv: r.kv}}}
		default:
			res[i] = &metav1.BatchResult{Result: &metav1.BatchResult_Delete{Delete: &metav1.DeleteResponse{Deleted: true, Revision: r.rev}}}
		}
	}
}

// routeOps is route for batched ops: here (nil, nil), the leader's batch
// stream, or nowhere.
func (s *Server) routeOps(forward bool) (*batchStream, error) {
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
	bs, err := s.peerStream(addr)
	if err != nil {
		return nil, &NotLeaderError{LeaderID: id, LeaderAddr: addr}
	}
	return bs, nil
}

func (s *Server) peerStream(addr string) (*batchStream, error) {
	cc, err := s.peer(addr)
	if err != nil {
		return nil, err
	}
	s.peerMu.Lock()
	defer s.peerMu.Unlock()
	if s.peerStreams == nil {
		return nil, ErrStopped
	}
	bs := s.peerStreams[addr]
	if bs == nil {
		bs = newBatchStream(cc, defaultBatchWindow)
		s.peerStreams[addr] = bs
	}
	return bs, nil
}

// forwardOps sends ops[lead] to the leader as one batch (the leader does not
// forward them again).
func (s *Server) forwardOps(ctx context.Context, leader *batchStream, ops []*metav1.BatchOp, lead []int, res []*metav1.BatchResult, errs []error) {
	s.metrics.forwarded.Add(float64(len(lead)))
	sub := make([]*metav1.BatchOp, len(lead))
	for j, i := range lead {
		sub[j] = ops[i]
	}
	var deadline time.Time
	if _, ok := ctx.Deadline(); !ok {
		deadline = time.Now().Add(s.opts.ApplyTimeout)
	}
	rs, serr := leader.call(ctx, sub, deadline)
	for j, i := range lead {
		switch {
		case serr != nil:
			errs[i] = serr.classify(isWrite(ops[i]))
		case rs[j].GetError() != nil:
			errs[i] = opErrorToErr(rs[j].GetError())
		default:
			res[i] = rs[j]
		}
	}
}

// serveOne serves a single op (the unary and in-process Get, Put, Delete).
func (s *Server) serveOne(ctx context.Context, op *metav1.BatchOp, forward bool) (*metav1.BatchResult, error) {
	res, errs := s.serveOps(ctx, []*metav1.BatchOp{op}, forward)
	return res[0], errs[0]
}

// ---- op errors ----

// opError encodes an error for a BatchResult: what toStatus would send.
func opError(err error) *metav1.OpError {
	st := status.Convert(toStatus(err))
	e := &metav1.OpError{Code: uint32(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == errorDomain {
			e.Reason, e.Metadata = info.Reason, info.Metadata
		}
	}
	return e
}

// opErrorStatus is the gRPC status error an OpError stands for.
func opErrorStatus(e *metav1.OpError) error {
	st := status.New(codes.Code(e.Code), e.Message)
	if e.Reason != "" {
		if d, err := st.WithDetails(&errdetails.ErrorInfo{Domain: errorDomain, Reason: e.Reason, Metadata: e.Metadata}); err == nil {
			st = d
		}
	}
	return st.Err()
}

// opErrorToErr decodes an OpError into this package's errors.
func opErrorToErr(e *metav1.OpError) error { return fromStatus(opErrorStatus(e)) }
