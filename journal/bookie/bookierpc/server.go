package bookierpc

import (
	"context"
	"io"
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
	}}
	metrics.Register(o.Registerer, s.m.streams, s.m.inflight, s.m.badCRC)
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

	var resps []*journalv1.AddResponse
	for {
		batch, finished, recvErr := st.take()
		if err := st.send(stream, batch, &resps); err != nil {
			return err
		}
		if len(batch) > 0 {
			continue
		}
		if finished {
			return recvErr
		}
		select {
		case <-st.wake:
		case <-detached:
			if err := st.send(stream, st.drain(), &resps); err != nil {
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

// send sends the answers, several per message (AddResponse.batch), and
// releases their bytes once sent. resps is scratch space kept between
// calls.
func (st *addStream) send(stream grpc.BidiStreamingServer[journalv1.AddRequest, journalv1.AddResponse], batch []answer, resps *[]*journalv1.AddResponse) error {
	for len(batch) > 0 {
		chunk := batch[:min(len(batch), MaxAnswersPerMessage)]
		batch = batch[len(chunk):]
		msg := chunk[0].resp
		if len(chunk) > 1 {
			rs := (*resps)[:0]
			for _, a := range chunk {
				rs = append(rs, a.resp)
			}
			msg = &journalv1.AddResponse{Batch: rs}
			*resps = rs
		}
		err := stream.Send(msg)
		clear(*resps)
		if err != nil {
			return err
		}
		var cost int64
		for _, a := range chunk {
			cost += a.cost
		}
		st.release(cost)
	}
	return nil
}

// answer is one AddResponse waiting to be sent and the bytes it holds.
type answer struct {
	resp *journalv1.AddResponse
	cost int64
}

// addStream is the state of one AddEntries stream.
type addStream struct {
	s     *Server
	b     *bookie.Bookie
	limit int64

	mu      sync.Mutex
	queue   []answer // completed, not yet sent
	pending int      // passed to the bookie, not yet completed
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
	batch, st.queue = st.queue, nil
	if st.ended && st.recvErr != nil {
		return batch, len(batch) == 0, st.recvErr
	}
	return batch, st.ended && st.pending == 0 && len(batch) == 0, nil
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

// complete queues the answer to an add; it never blocks.
func (st *addStream) complete(a answer, wasPending bool) {
	st.mu.Lock()
	st.queue = append(st.queue, a)
	if wasPending {
		st.pending--
	}
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
// fails, and passes them to the bookie.
func (st *addStream) recvLoop(ctx context.Context, stream grpc.BidiStreamingServer[journalv1.AddRequest, journalv1.AddResponse]) {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			st.end(nil)
			return
		}
		if err != nil {
			st.end(err)
			return
		}
		if len(req.Batch) == 0 {
			if err := st.add(ctx, req); err != nil {
				st.end(err)
				return
			}
			continue
		}
		for _, a := range req.Batch {
			if err := st.add(ctx, a); err != nil {
				st.end(err)
				return
			}
		}
	}
}

// add checks one add and passes it to the bookie; an error ends the
// stream.
func (st *addStream) add(ctx context.Context, req *journalv1.AddRequest) error {
	if len(req.Batch) > 0 {
		return status.Error(codes.InvalidArgument, "bookierpc: a batched add carries a batch of its own")
	}
	cost := int64(len(req.Payload)) + AddOverhead
	if err := st.acquire(ctx, cost); err != nil {
		return status.FromContextError(err).Err()
	}
	ledger, entry := req.Ledger, req.Entry
	if CRC32C(req.Payload) != req.Crc32C {
		st.s.m.badCRC.Inc()
		st.complete(answer{cost: cost, resp: &journalv1.AddResponse{Ledger: ledger, Entry: entry,
			Status: journalv1.Status_STATUS_BAD_CRC, Message: "payload does not match its crc32c; nothing stored"}}, false)
		return nil
	}
	st.mu.Lock()
	st.pending++
	st.mu.Unlock()
	st.s.submitted.Add(1)
	st.b.AddEntry(ledger, entry, req.Lac, req.Payload, req.Recovery, func(err error) {
		st.complete(answer{cost: cost, resp: &journalv1.AddResponse{Ledger: ledger, Entry: entry,
			Status: statusOf(err), Message: message(err)}}, true)
	})
	return nil
}
