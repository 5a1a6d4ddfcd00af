package bookierpc

import (
	"context"
	"io"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quiremq/quire/internal/metrics"
	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// StreamInflightBytes bounds what one AddEntries stream holds: the adds
	// received and not yet answered, each counted as its payload plus
	// AddOverhead bytes. At the bound the server stops reading the stream
	// (gRPC flow control then slows the writer) until answers are sent. One
	// add larger than the bound is still accepted when nothing else is in
	// flight. Default 8 MiB.
	StreamInflightBytes int64
	// Registerer receives the quire_bookie_rpc_* metrics; nil registers
	// none.
	Registerer prometheus.Registerer
}

// AddOverhead is what one add counts against StreamInflightBytes besides
// its payload (the request, the callback and the answer).
const AddOverhead = 128

// EnsureDefaults fills zero fields with their defaults and returns o.
func (o *ServerOptions) EnsureDefaults() *ServerOptions {
	if o.StreamInflightBytes <= 0 {
		o.StreamInflightBytes = 8 << 20
	}
	return o
}

// Server serves journal.v1.Bookie for the bookie attached to it. It is
// registered on a gRPC server before that server serves (gRPC allows no
// later registration) and answers UNAVAILABLE while no bookie is attached:
// a node registers it when it is built and attaches the bookie once the
// bookie component has started.
type Server struct {
	journalv1.UnimplementedBookieServer

	opts ServerOptions
	m    serverMetrics

	mu       sync.Mutex
	b        *bookie.Bookie
	detached chan struct{} // closed by Detach

	peak      atomic.Int64 // highest bytes held by one stream (tests)
	submitted atomic.Int64 // adds passed to the bookie (tests)
}

var _ journalv1.BookieServer = (*Server)(nil)

type serverMetrics struct {
	streams  prometheus.Gauge
	inflight prometheus.Gauge
	badCRC   prometheus.Counter
	requests prometheus.Counter // AddRequest messages
	adds     prometheus.Counter // adds in them
}

// NewServer returns a Server with no bookie attached.
func NewServer(o ServerOptions) *Server {
	o.EnsureDefaults()
	ns, sub := metrics.Namespace, "bookie_rpc"
	s := &Server{opts: o, m: serverMetrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "add_streams",
			Help: "Open AddEntries streams."}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "inflight_bytes",
			Help: "Bytes held by AddEntries streams: adds received and not yet answered."}),
		badCRC: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bad_crc_total",
			Help: "Adds refused because the payload did not match its crc32c."}),
		requests: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "add_requests_total",
			Help: "AddEntries request messages received (adds_total / add_requests_total is the batching)."}),
		adds: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "adds_total",
			Help: "Adds received on AddEntries streams."}),
	}}
	metrics.Register(o.Registerer, s.m.streams, s.m.inflight, s.m.badCRC, s.m.requests, s.m.adds)
	return s
}

// Attach makes s serve b. It replaces any bookie attached before.
func (s *Server) Attach(b *bookie.Bookie) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = b
	s.detached = make(chan struct{})
}

// Detach stops serving the attached bookie: new calls answer UNAVAILABLE,
// and open AddEntries streams send the answers they have and end with
// UNAVAILABLE. Close the bookie first, so that every add in flight is
// answered (acknowledged, or CLOSED) before its stream ends. Detach does not
// close the bookie.
func (s *Server) Detach() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b != nil {
		s.b = nil
		close(s.detached)
	}
}

var errNotRunning = status.Error(codes.Unavailable, "bookie: not running on this node (starting, stopping or not enabled)")

func (s *Server) bookie() (*bookie.Bookie, <-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil {
		return nil, nil, errNotRunning
	}
	return s.b, s.detached, nil
}

// ReadEntry implements journalv1.BookieServer.
func (s *Server) ReadEntry(_ context.Context, req *journalv1.ReadEntryRequest) (*journalv1.ReadEntryResponse, error) {
	b, _, err := s.bookie()
	if err != nil {
		return nil, err
	}
	data, err := b.ReadEntry(req.Ledger, req.Entry, req.Fence)
	if err != nil {
		return &journalv1.ReadEntryResponse{Status: statusOf(err), Message: message(err)}, nil
	}
	return &journalv1.ReadEntryResponse{Status: journalv1.Status_STATUS_OK, Payload: data, Crc32C: CRC32C(data)}, nil
}

// ReadLAC implements journalv1.BookieServer.
func (s *Server) ReadLAC(_ context.Context, req *journalv1.ReadLACRequest) (*journalv1.ReadLACResponse, error) {
	b, _, err := s.bookie()
	if err != nil {
		return nil, err
	}
	lac, err := b.ReadLAC(req.Ledger, req.Fence)
	if err != nil {
		return &journalv1.ReadLACResponse{Status: statusOf(err), Message: message(err)}, nil
	}
	return &journalv1.ReadLACResponse{Status: journalv1.Status_STATUS_OK, Lac: lac}, nil
}

// WriteLAC implements journalv1.BookieServer.
func (s *Server) WriteLAC(_ context.Context, req *journalv1.WriteLACRequest) (*journalv1.WriteLACResponse, error) {
	b, _, err := s.bookie()
	if err != nil {
		return nil, err
	}
	err = b.WriteLAC(req.Ledger, req.Lac)
	return &journalv1.WriteLACResponse{Status: statusOf(err), Message: message(err)}, nil
}

// Fence implements journalv1.BookieServer.
func (s *Server) Fence(_ context.Context, req *journalv1.FenceRequest) (*journalv1.FenceResponse, error) {
	b, _, err := s.bookie()
	if err != nil {
		return nil, err
	}
	lac, err := b.Fence(req.Ledger)
	if err != nil {
		return &journalv1.FenceResponse{Status: statusOf(err), Message: message(err)}, nil
	}
	return &journalv1.FenceResponse{Status: journalv1.Status_STATUS_OK, Lac: lac}, nil
}

// DeleteLedger implements journalv1.BookieServer.
func (s *Server) DeleteLedger(_ context.Context, req *journalv1.DeleteLedgerRequest) (*journalv1.DeleteLedgerResponse, error) {
	b, _, err := s.bookie()
	if err != nil {
		return nil, err
	}
	err = b.DeleteLedger(req.Ledger)
	return &journalv1.DeleteLedgerResponse{Status: statusOf(err), Message: message(err)}, nil
}

// AddEntries implements journalv1.BookieServer.
//
// The handler's goroutine sends the answers; a second goroutine receives
// the adds, checks their CRCs and passes them to the bookie, whose
// callbacks queue the answers. The bytes of adds received and not yet
// answered are bounded by StreamInflightBytes: the receiver waits at the
// bound, and a callback never blocks (the bookie calls it on its journal
// goroutine). When the client closes its side, the handler returns once
// every add has been answered; when the stream's context ends (the client
// cancelled or went away) it returns at once, and adds still in the bookie
// complete into a queue no one reads.
func (s *Server) AddEntries(stream grpc.BidiStreamingServer[journalv1.AddRequest, journalv1.AddResponse]) error {
	b, detached, err := s.bookie()
	if err != nil {
		return err
	}
	s.m.streams.Inc()
	defer s.m.streams.Dec()
	ctx := stream.Context()
	st := &addStream{s: s, b: b, limit: s.opts.StreamInflightBytes, wake: make(chan struct{}, 1), freed: make(chan struct{}, 1)}
	defer st.releaseAll()
	go st.recvLoop(ctx, stream)

	var out sender
	for {
		batch, finished, recvErr := st.take()
		if err := st.send(stream, batch, &out); err != nil {
			return err
		}
		if len(batch) > 0 {
			st.recycle(batch)
			continue
		}
		if finished {
			return recvErr
		}
		select {
		case <-st.wake:
		case <-detached:
			if err := st.send(stream, st.drain(), &out); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "bookie: stopping")
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// MaxAnswersPerMessage bounds how many answers one AddResponse carries.
const MaxAnswersPerMessage = 1024

// sender is the handler's scratch space for sending answers, kept between
// sends.
type sender struct {
	packed []byte
	resps  []*journalv1.AddResponse
}

// send sends the answers, many per message — packed answers to packed adds
// (AddResponse.packed), the others as AddResponse.batch — and releases
// their bytes once sent.
func (st *addStream) send(stream grpc.BidiStreamingServer[journalv1.AddRequest, journalv1.AddResponse], batch []answer, out *sender) error {
	for len(batch) > 0 {
		chunk := batch[:min(len(batch), MaxAnswersPerMessage)]
		batch = batch[len(chunk):]
		var cost int64
		buf := out.packed[:0]
		rs := out.resps[:0]
		for i := range chunk {
			a := &chunk[i]
			cost += a.cost
			if a.packed {
				buf = appendPackedAnswer(buf, a.seq, a.ledger, a.entry, a.status, a.msg)
			} else {
				rs = append(rs, &journalv1.AddResponse{Ledger: a.ledger, Entry: a.entry, Status: a.status, Message: a.msg})
			}
		}
		out.packed, out.resps = buf, rs
		var err error
		if len(buf) > 0 {
			err = stream.Send(&journalv1.AddResponse{Packed: buf})
		}
		if err == nil && len(rs) == 1 {
			err = stream.Send(rs[0])
		} else if err == nil && len(rs) > 1 {
			err = stream.Send(&journalv1.AddResponse{Batch: rs})
		}
		clear(rs)
		if err != nil {
			return err
		}
		st.release(cost)
	}
	return nil
}

// answer is one add's answer waiting to be sent and the bytes its add
// holds.
type answer struct {
	seq, ledger, entry uint64
	status             journalv1.Status
	msg                string
	cost               int64
	packed             bool // the add came packed: answer it packed
}

// addStream is the state of one AddEntries stream.
type addStream struct {
	s     *Server
	b     *bookie.Bookie
	limit int64
	seq   uint64          // the number of the next add received; receiver-owned
	reqs  []bookie.AddReq // scratch for a packed message's adds; receiver-owned

	mu      sync.Mutex
	queue   []answer // completed, not yet sent
	spare   []answer // the array of the last batch sent, for the next queue
	pending int      // received, not yet completed
	used    int64    // bytes of adds received and not yet answered
	ended   bool     // the receiver stopped
	gone    bool     // the handler returned: nothing more is held
	recvErr error    // why it stopped (nil: the client closed its side)

	wake  chan struct{} // to the sender: an answer is queued, or the receiver ended
	freed chan struct{} // to the receiver: bytes were released
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// take returns the queued answers; finished is true once the receiver has
// ended and nothing is pending or queued (recvErr: why it ended). A
// receiver that failed (not a clean close) finishes the stream at once.
func (st *addStream) take() (batch []answer, finished bool, recvErr error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.queue) > 0 {
		// An empty queue keeps its array: swapped for the spare, it was
		// dropped (only sent batches are recycled), and the next answers
		// grew a new one from nothing.
		batch, st.queue, st.spare = st.queue, st.spare, nil
	}
	if st.ended && st.recvErr != nil {
		return batch, len(batch) == 0, st.recvErr
	}
	return batch, st.ended && st.pending == 0 && len(batch) == 0, nil
}

// recycle gives back a batch take returned, once sent, as the next queue's
// array.
func (st *addStream) recycle(batch []answer) {
	clear(batch)
	st.mu.Lock()
	st.spare = batch[:0]
	st.mu.Unlock()
}

func (st *addStream) drain() []answer {
	st.mu.Lock()
	defer st.mu.Unlock()
	batch := st.queue
	st.queue = nil
	return batch
}

// acquire waits until n more bytes fit (or nothing is held), then holds
// them.
func (st *addStream) acquire(ctx context.Context, n int64) error {
	for {
		st.mu.Lock()
		if st.gone {
			st.mu.Unlock()
			return context.Canceled
		}
		if st.used == 0 || st.used+n <= st.limit {
			st.used += n
			used := st.used
			st.mu.Unlock()
			st.s.m.inflight.Add(float64(n))
			for p := st.s.peak.Load(); used > p && !st.s.peak.CompareAndSwap(p, used); p = st.s.peak.Load() {
			}
			return nil
		}
		st.mu.Unlock()
		select {
		case <-st.freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (st *addStream) release(n int64) {
	st.mu.Lock()
	if st.gone {
		st.mu.Unlock()
		return
	}
	st.used -= n
	st.mu.Unlock()
	st.s.m.inflight.Sub(float64(n))
	signal(st.freed)
}

// releaseAll returns the stream's bytes to the gauge when the handler
// ends (answers never sent are dropped).
func (st *addStream) releaseAll() {
	st.mu.Lock()
	used := st.used
	st.used, st.gone = 0, true
	st.mu.Unlock()
	st.s.m.inflight.Sub(float64(used))
	signal(st.freed)
}

// refuseBadCRC answers an add whose payload does not match its crc32c.
func (st *addStream) refuseBadCRC(a answer) {
	st.s.m.badCRC.Inc()
	a.status, a.msg = journalv1.Status_STATUS_BAD_CRC, "payload does not match its crc32c; nothing stored"
	st.complete(a)
}

// complete queues the answer to a pending add; it never blocks.
func (st *addStream) complete(a answer) {
	st.mu.Lock()
	st.queue = append(st.queue, a)
	st.pending--
	st.mu.Unlock()
	signal(st.wake)
}

func (st *addStream) end(err error) {
	st.mu.Lock()
	st.ended, st.recvErr = true, err
	st.mu.Unlock()
	signal(st.wake)
}

// recvLoop receives adds until the client closes its side or the stream
// fails, and passes them to the bookie. It numbers the adds of the stream
// in the order they arrive (the seq of packed answers).
func (st *addStream) recvLoop(ctx context.Context, stream grpc.BidiStreamingServer[journalv1.AddRequest, journalv1.AddResponse]) {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			st.end(nil)
			return
		}
		if err == nil {
			err = st.request(ctx, req)
		}
		if err != nil {
			st.end(err)
			return
		}
	}
}

// request handles one AddRequest in any of its forms; an error ends the
// stream.
func (st *addStream) request(ctx context.Context, req *journalv1.AddRequest) error {
	st.s.m.requests.Inc()
	seq := st.seq
	defer func() { st.s.m.adds.Add(float64(st.seq - seq)) }()
	if len(req.Packed) > 0 {
		return st.packed(ctx, req.Packed)
	}
	if len(req.Batch) == 0 {
		return st.add(ctx, req)
	}
	for _, a := range req.Batch {
		if len(a.Batch) > 0 || len(a.Packed) > 0 {
			return status.Error(codes.InvalidArgument, "bookierpc: a batched add carries a batch of its own")
		}
		if err := st.add(ctx, a); err != nil {
			return err
		}
	}
	return nil
}

// packed decodes the adds of a packed request and passes them to the
// bookie in one Bookie.AddEntries call (its lock taken once, no closure
// per add). The payloads alias b (the request's own bytes, which nothing
// else uses); the bytes of the whole message are acquired at once.
func (st *addStream) packed(ctx context.Context, b []byte) error {
	var cost int64
	n := 0
	for rest := b; len(rest) > 0; n++ {
		a, r, err := nextPackedAdd(rest)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		cost += int64(len(a.payload)) + AddOverhead
		rest = r
	}
	if err := st.acquire(ctx, cost); err != nil {
		return status.FromContextError(err).Err()
	}
	st.mu.Lock()
	st.pending += n
	st.mu.Unlock()
	reqs := st.reqs[:0]
	pb := packedBatches.Get().(*packedBatch)
	if pb.done == nil {
		pb.done = pb.answer
	}
	pb.st = st
	answers := slices.Grow(pb.answers[:0], n)
	for len(b) > 0 {
		a, r, _ := nextPackedAdd(b)
		b = r
		ans := answer{seq: st.seq, ledger: a.ledger, entry: a.entry, cost: int64(len(a.payload)) + AddOverhead, packed: true}
		st.seq++
		if CRC32C(a.payload) != a.crc {
			st.refuseBadCRC(ans)
			continue
		}
		reqs = append(reqs, bookie.AddReq{Ledger: a.ledger, Entry: a.entry, LAC: a.lac, Payload: a.payload, Recovery: a.recovery})
		answers = append(answers, ans)
	}
	pb.answers = answers
	if len(reqs) > 0 {
		st.s.submitted.Add(int64(len(reqs)))
		pb.left.Store(int64(len(reqs)))
		st.b.AddEntries(reqs, pb.done) // pb may be reused once this returns
	} else {
		pb.release()
	}
	clear(reqs) // the payloads are the bookie's now
	st.reqs = reqs[:0]
	return nil
}

// packedBatch is what the answers to a packed message's adds need until
// the last is answered; pooled, as a new array of answers and a closure
// per message were an eighth of the bytes the RPC path allocated per add.
type packedBatch struct {
	st      *addStream
	answers []answer // by index in the AddEntries batch
	left    atomic.Int64
	done    func(i int, err error) // pb.answer, bound once (set on first use)
}

var packedBatches = sync.Pool{New: func() any { return new(packedBatch) }}

// answer is the AddEntries callback: it queues the answer to add i, and
// after the last one puts pb back in the pool.
func (pb *packedBatch) answer(i int, err error) {
	a := pb.answers[i]
	a.status, a.msg = statusOf(err), message(err)
	pb.st.complete(a)
	if pb.left.Add(-1) == 0 {
		pb.release()
	}
}

func (pb *packedBatch) release() {
	clear(pb.answers)
	pb.answers, pb.st = pb.answers[:0], nil
	packedBatches.Put(pb)
}

// add checks one add not packed and passes it to the bookie.
func (st *addStream) add(ctx context.Context, req *journalv1.AddRequest) error {
	cost := int64(len(req.Payload)) + AddOverhead
	if err := st.acquire(ctx, cost); err != nil {
		return status.FromContextError(err).Err()
	}
	st.mu.Lock()
	st.pending++
	st.mu.Unlock()
	st.submit(answer{seq: st.seq, ledger: req.Ledger, entry: req.Entry, cost: cost}, req.Lac, req.Crc32C, req.Payload, req.Recovery)
	st.seq++
	return nil
}

// submit checks an add's CRC and passes it to the bookie; its bytes are
// acquired and it is counted pending. a holds what its answer needs.
func (st *addStream) submit(a answer, lac int64, crc uint32, payload []byte, recovery bool) {
	if CRC32C(payload) != crc {
		st.refuseBadCRC(a)
		return
	}
	st.s.submitted.Add(1)
	st.b.AddEntry(a.ledger, a.entry, lac, payload, recovery, func(err error) {
		a.status, a.msg = statusOf(err), message(err)
		st.complete(a)
	})
}
