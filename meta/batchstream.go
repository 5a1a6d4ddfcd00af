package meta

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// batchStream is the calling side of one node's Batch stream, shared by
// concurrent callers (Client, and a follower forwarding to the leader).
// Callers queue their ops; one sender goroutine sends everything queued as
// one BatchRequest (split by maxRequestBytes). At most window requests await
// their results; while they do, new ops queue and leave together when one
// is answered, so ops coalesce under load and a lone op leaves at once. A
// receiver goroutine hands each result to its caller. When the stream
// breaks, ops that were sent fail with a streamError that says so (a write
// then has an unknown outcome) and ops still queued fail as not sent (safe to
// retry); the next call opens a new stream.
type batchStream struct {
	cc     *grpc.ClientConn
	window int             // requests awaiting results, at most
	ctx    context.Context // ends with close
	cancel context.CancelFunc
	kick   chan struct{}
	tick   atomic.Pointer[chan struct{}] // closed every tickInterval

	mu      sync.Mutex
	queue   []*batchCall
	running bool // sender goroutine started
	closed  bool
}

// batchCall is the ops of one caller, sent in one BatchRequest.
type batchCall struct {
	ops  []*metav1.BatchOp
	size int
	res  []*metav1.BatchResult
	err  *streamError
	done chan struct{}
}

// streamError is a failed stream: the op was sent (its outcome is unknown)
// or not.
type streamError struct {
	sent bool
	err  error
}

func (e *streamError) Error() string {
	if e.sent {
		return fmt.Sprintf("batch stream broke after sending: %v", e.err)
	}
	return fmt.Sprintf("batch stream failed before sending: %v", e.err)
}

// classify turns a stream failure into this package's errors: a write that
// was sent is ErrAmbiguous, anything else ErrNotLeader (not applied, retry).
func (e *streamError) classify(write bool) error {
	if e.sent && write {
		return fmt.Errorf("%w: %v", ErrAmbiguous, e)
	}
	return fmt.Errorf("%w: %v", ErrNotLeader, e)
}

// maxRequestBytes bounds the ops of one BatchRequest (an op larger than it
// goes alone), far below gRPC's default 4 MiB message limit.
const maxRequestBytes = 1 << 20

// defaultBatchWindow is the number of requests a batch stream has awaiting
// results before new ops wait (and coalesce) for one to be answered.
const defaultBatchWindow = 4

func newBatchStream(cc *grpc.ClientConn, window int) *batchStream {
	ctx, cancel := context.WithCancel(context.Background())
	b := &batchStream{cc: cc, window: window, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1)}
	tick := make(chan struct{})
	b.tick.Store(&tick)
	return b
}

// call sends ops as part of the next batch and returns one result per op,
// or the stream's failure. When ctx ends or the deadline (if not zero)
// passes first, it returns that as a failure after sending (the ops may
// still be sent).
func (b *batchStream) call(ctx context.Context, ops []*metav1.BatchOp, deadline time.Time) ([]*metav1.BatchResult, *streamError) {
	c := &batchCall{ops: ops, res: make([]*metav1.BatchResult, len(ops)), done: make(chan struct{})}
	for _, op := range ops {
		c.size += opSize(op)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, &streamError{err: ErrStopped}
	}
	b.queue = append(b.queue, c)
	if !b.running {
		b.running = true
		go b.send()
		go b.ticker()
	}
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	for {
		var tick <-chan struct{}
		if !deadline.IsZero() {
			tick = *b.tick.Load()
		}
		select {
		case <-c.done:
			return c.res, c.err
		case <-ctx.Done():
			return nil, &streamError{sent: true, err: ctx.Err()}
		case <-tick:
			if !time.Now().Before(deadline) {
				return nil, &streamError{sent: true, err: context.DeadlineExceeded}
			}
		}
	}
}

// tickInterval is the resolution of call's deadline.
const tickInterval = 100 * time.Millisecond

// ticker closes and replaces b.tick every tickInterval: callers with a
// deadline but no context deadline check it then, which costs less than
// a timer per call.
func (b *batchStream) ticker() {
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
			next := make(chan struct{})
			close(*b.tick.Swap(&next))
		}
	}
}

// close fails queued calls and ends the stream.
func (b *batchStream) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// liveStream is one open Batch stream and the calls awaiting its answers.
type liveStream struct {
	st     grpc.BidiStreamingClient[metav1.BatchRequest, metav1.BatchResponse]
	ctx    context.Context // ends when the stream breaks
	cancel context.CancelFunc

	slots chan struct{} // one token per request awaiting its results

	mu      sync.Mutex
	pending map[uint64]*inflight
	err     error // set once broken
}

// send is the sender goroutine.
func (b *batchStream) send() {
	var ls *liveStream
	var id uint64
	for {
		select {
		case <-b.ctx.Done():
			fail(b.take(-1), &streamError{err: ErrStopped})
			return
		case <-b.kick:
		}
		for {
			if ls == nil || ls.broken() {
				if !b.queued() {
					break
				}
				var err error
				if ls, err = b.open(); err != nil {
					fail(b.take(-1), &streamError{err: err})
					break
				}
			}
			// Wait for room in the window; ops queue meanwhile.
			select {
			case ls.slots <- struct{}{}:
			case <-ls.ctx.Done():
				continue // broken: fail or reopen above
			}
			q := b.take(maxRequestBytes)
			if len(q) == 0 {
				<-ls.slots
				break
			}
			id++
			ls.sendBatch(id, q)
		}
	}
}

func (b *batchStream) queued() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue) > 0
}

// take removes queued calls of about limit bytes (at least one), or all
// of them when limit < 0.
func (b *batchStream) take(limit int) []*batchCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, size := len(b.queue), 0
	if limit >= 0 {
		n = 0
		for n < len(b.queue) && (n == 0 || size+b.queue[n].size <= limit) {
			size += b.queue[n].size
			n++
		}
	}
	q := b.queue[:n:n]
	if n == len(b.queue) {
		b.queue = nil
	} else {
		b.queue = b.queue[n:]
	}
	return q
}

func fail(q []*batchCall, err *streamError) {
	for _, c := range q {
		c.err = err
		close(c.done)
	}
}

func (b *batchStream) open() (*liveStream, error) {
	ctx, cancel := context.WithCancel(forwardCtx(b.ctx))
	st, err := metav1.NewMetaClient(b.cc).Batch(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	ls := &liveStream{st: st, ctx: ctx, cancel: cancel, pending: map[uint64]*inflight{}, slots: make(chan struct{}, b.window)}
	go ls.recv()
	return ls, nil
}

func (ls *liveStream) broken() bool {
	if ls.ctx.Err() != nil {
		return true
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.err != nil
}

// inflight is one sent request: the calls it carries and its results.
type inflight struct {
	calls []*batchCall
	res   []*metav1.BatchResult
	got   int
}

// finish hands the results (or err) to the calls.
func (f *inflight) finish(err *streamError) {
	off := 0
	for _, c := range f.calls {
		if err != nil {
			c.err = err
		} else {
			copy(c.res, f.res[off:off+len(c.ops)])
		}
		off += len(c.ops)
		close(c.done)
	}
}

// sendBatch sends calls as one request, holding a window slot (released
// when the last result arrives). If the stream breaks, recv fails the calls
// as sent.
func (ls *liveStream) sendBatch(id uint64, calls []*batchCall) {
	req := &metav1.BatchRequest{Id: id}
	if len(calls) == 1 {
		req.Ops = calls[0].ops
	} else {
		n := 0
		for _, c := range calls {
			n += len(c.ops)
		}
		req.Ops = make([]*metav1.BatchOp, 0, n)
		for _, c := range calls {
			req.Ops = append(req.Ops, c.ops...)
		}
	}
	f := &inflight{calls: calls, res: make([]*metav1.BatchResult, len(req.Ops))}
	ls.mu.Lock()
	if ls.err != nil {
		err := ls.err
		ls.mu.Unlock()
		f.finish(&streamError{err: err})
		return
	}
	ls.pending[id] = f
	ls.mu.Unlock()
	if err := ls.st.Send(req); err != nil {
		ls.cancel() // Recv fails too, and fails every pending call as sent
	}
}

// recv delivers results until the stream breaks, then fails every pending
// request as sent.
func (ls *liveStream) recv() {
	for {
		resp, err := ls.st.Recv()
		if err != nil {
			ls.mu.Lock()
			ls.err = err
			p := ls.pending
			ls.pending = nil
			ls.mu.Unlock()
			ls.cancel()
			for _, f := range p {
				f.finish(&streamError{sent: true, err: err})
			}
			return
		}
		ls.mu.Lock()
		f := ls.pending[resp.Id]
		if f == nil || int(resp.Offset)+len(resp.Results) > len(f.res) {
			ls.mu.Unlock()
			continue
		}
		copy(f.res[resp.Offset:], resp.Results)
		f.got += len(resp.Results)
		complete := f.got >= len(f.res)
		if complete {
			delete(ls.pending, resp.Id)
		}
		ls.mu.Unlock()
		if complete {
			<-ls.slots
			f.finish(nil)
		}
	}
}
