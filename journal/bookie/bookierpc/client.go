package bookierpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie"
)

// MaxMessageSize is the gRPC message size limit the client (and a server
// that wants entries up to bookie.MaxEntrySizeLimit) uses: the largest
// entry plus room for the message around it.
const MaxMessageSize = bookie.MaxEntrySizeLimit + 64<<10

// Client calls one bookie's journal.v1.Bookie service. Its methods return
// nil, a *StatusError (the bookie's answer: errors.Is matches the
// journal/bookie sentinels), or a gRPC error (no answer: treat it as a
// timeout). A Client is safe for concurrent use.
type Client struct {
	rpc  journalv1.BookieClient
	conn *grpc.ClientConn // owned, when made by Dial
}

// Dial returns a client of the bookie at addr (HOST:PORT), over plaintext
// gRPC unless opts say otherwise, with the transport settings of
// GRPCServerOptions. The connection is made lazily.
func Dial(addr string, opts ...grpc.DialOption) (*Client, error) {
	opts = append(append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)),
	}, dialOptions()...), opts...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("bookierpc: dial %s: %w", addr, err)
	}
	return &Client{rpc: journalv1.NewBookieClient(cc), conn: cc}, nil
}

// NewClient returns a client over an existing connection, which it does
// not own.
func NewClient(cc grpc.ClientConnInterface) *Client {
	return &Client{rpc: journalv1.NewBookieClient(cc)}
}

// Close closes the connection if Dial made it.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// ReadEntry reads an entry; with fence it fences the ledger first. An
// absent entry is a *StatusError matching bookie.ErrNoSuchEntry. The payload
// is checked against the crc32c the bookie sent (ErrBadCRC).
func (c *Client) ReadEntry(ctx context.Context, ledger, entry uint64, fence bool) ([]byte, error) {
	r, err := c.rpc.ReadEntry(ctx, &journalv1.ReadEntryRequest{Ledger: ledger, Entry: entry, Fence: fence})
	if err != nil {
		return nil, err
	}
	if err := errorOf(r.Status, r.Message); err != nil {
		return nil, err
	}
	if CRC32C(r.Payload) != r.Crc32C {
		return nil, fmt.Errorf("%w: ledger %d entry %d read back", ErrBadCRC, ledger, entry)
	}
	return r.Payload, nil
}

// ReadLAC returns the ledger's LAC; with fence it fences the ledger first.
func (c *Client) ReadLAC(ctx context.Context, ledger uint64, fence bool) (int64, error) {
	r, err := c.rpc.ReadLAC(ctx, &journalv1.ReadLACRequest{Ledger: ledger, Fence: fence})
	if err != nil {
		return 0, err
	}
	return r.Lac, errorOf(r.Status, r.Message)
}

// WriteLAC writes an explicit LAC.
func (c *Client) WriteLAC(ctx context.Context, ledger uint64, lac int64) error {
	r, err := c.rpc.WriteLAC(ctx, &journalv1.WriteLACRequest{Ledger: ledger, Lac: lac})
	if err != nil {
		return err
	}
	return errorOf(r.Status, r.Message)
}

// Fence fences the ledger and returns its LAC.
func (c *Client) Fence(ctx context.Context, ledger uint64) (int64, error) {
	r, err := c.rpc.Fence(ctx, &journalv1.FenceRequest{Ledger: ledger})
	if err != nil {
		return 0, err
	}
	return r.Lac, errorOf(r.Status, r.Message)
}

// DeleteLedger deletes the ledger.
func (c *Client) DeleteLedger(ctx context.Context, ledger uint64) error {
	r, err := c.rpc.DeleteLedger(ctx, &journalv1.DeleteLedgerRequest{Ledger: ledger})
	if err != nil {
		return err
	}
	return errorOf(r.Status, r.Message)
}

// Add is one entry to add.
type Add struct {
	Ledger, Entry uint64
	// LAC is the writer's last add confirmed, piggybacked; -1 for none.
	LAC     int64
	Payload []byte
	// CRC32C is the CRC-32C of Payload when the caller has it (an entry
	// sent to several bookies needs it once); 0 has AddBatch compute it.
	CRC32C   uint32
	Recovery bool
	// Tag is the caller's own: not sent, handed back in the AddResult.
	Tag any
}

// AddResult is the outcome of one Add, which it carries back: Err is nil
// once the bookie has synced the entry, a *StatusError if the bookie
// refused it, or the stream's error if the stream ended before the answer
// (the add may or may not be stored: treat it like a timeout).
//
// Sent and Answered time the add's round trip on the stream, for latency
// breakdowns: Sent is when the message carrying it was handed to gRPC,
// Answered when the message carrying its answer was received (zero for
// an add failed with the stream).
type AddResult struct {
	Add
	Err            error
	Sent, Answered time.Time
}

// ErrStreamClosed is returned by AddStream.Add after Close or once the
// stream has ended.
var ErrStreamClosed = errors.New("bookierpc: add stream closed")

// AddStream pipelines adds to one bookie over one AddEntries stream: Add
// sends and returns without waiting, and done is called once per add, in
// the order the bookie completes them. Add blocks only when the bookie
// holds as many bytes of this stream as it allows (flow control).
//
// Adds travel packed (AddRequest.packed). The server numbers a stream's
// adds in the order it receives them and answers with that number, so the
// adds not yet answered are a window indexed by it (pending), not a map.
type AddStream struct {
	stream grpc.BidiStreamingClient[journalv1.AddRequest, journalv1.AddResponse]
	cancel context.CancelFunc
	done   func(AddResult)

	sendMu sync.Mutex // serializes Send and CloseSend
	closed bool       // CloseSend called; guarded by sendMu
	buf    []byte     // the packed adds being sent; guarded by sendMu

	mu       sync.Mutex
	pending  []slot // adds numbered base, base+1, ...: the window is pending[head:]
	base     uint64
	head     int // pending[:head] are answered
	n        int // adds in pending not yet answered
	ended    bool
	err      error // why the stream ended; nil after a clean end
	recvDone chan struct{}
}

// slot is one add sent on a stream, answered or not.
type slot struct {
	add      Add
	sent     time.Time
	answered bool
}

// AddStream opens an AddEntries stream. done is called for every add that
// Add accepted, from one goroutine at a time; it should not block for
// long (it holds up the answers behind it) and must not call Add. The
// stream ends when ctx ends or on Close.
func (c *Client) AddStream(ctx context.Context, done func(AddResult)) (*AddStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := c.rpc.AddEntries(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &AddStream{stream: st, cancel: cancel, done: done, recvDone: make(chan struct{})}
	go s.recvLoop()
	return s, nil
}

// Add sends an add. If it returns nil, done will be called for it exactly
// once; if it returns an error, done will not be. Add takes no ownership of
// a.Payload beyond its return.
func (s *AddStream) Add(a Add) error {
	return s.AddBatch([]Add{a})
}

// AddBatch sends adds in one message (AddRequest.packed), in order, as if
// each were sent by Add: if it returns nil, done will be called for each
// exactly once; if it returns an error, done will be called for none. The
// message must fit the server's receive limit: keep a batch's payloads
// well under MaxMessageSize (MaxBatchBytes). AddBatch takes no ownership of
// adds or their payloads beyond its return.
func (s *AddStream) AddBatch(adds []Add) error {
	if len(adds) == 0 {
		return nil
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	buf := s.buf[:0]
	for i := range adds {
		a := &adds[i]
		crc := a.CRC32C
		if crc == 0 {
			crc = CRC32C(a.Payload)
		}
		buf = appendPackedAdd(buf, a, crc)
	}
	s.buf = buf
	return s.sendPacked(adds, &journalv1.AddRequest{Packed: buf})
}

// sendPacked numbers adds, which msg carries, and sends msg; sendMu is
// held.
func (s *AddStream) sendPacked(adds []Add, msg *journalv1.AddRequest) error {
	s.mu.Lock()
	if s.ended {
		err := s.err
		s.mu.Unlock()
		return errors.Join(ErrStreamClosed, err)
	}
	now := time.Now()
	for _, a := range adds {
		s.pending = append(s.pending, slot{add: a, sent: now})
	}
	s.n += len(adds)
	s.mu.Unlock()

	var err error
	if s.closed {
		err = ErrStreamClosed
	} else {
		err = s.stream.Send(msg)
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) {
		// The stream has ended (gRPC's SendMsg): why (its status, e.g.
		// UNAVAILABLE from a bookie detaching) comes from the receiving
		// side, which ends promptly and fails every add pending with it,
		// these included.
		select {
		case <-s.recvDone:
		case <-time.After(5 * time.Second):
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return nil // the receiver has reported them as failed with the stream
	}
	// The message was not sent: no answer can come for these adds, the
	// last numbered (sendMu is held).
	clear(s.pending[len(s.pending)-len(adds):])
	s.pending = s.pending[:len(s.pending)-len(adds)]
	s.n -= len(adds)
	return fmt.Errorf("bookierpc: add ledger %d entries %d..%d: %w", adds[0].Ledger, adds[0].Entry, adds[len(adds)-1].Entry, err)
}

// MaxBatchBytes is what a caller of AddBatch should put in one message at
// most, counting each add as its payload plus BatchAddOverhead (a single
// larger add goes alone). gRPC receives a message into a pooled buffer of
// the next size up (…, 16 KiB, 32 KiB, 1 MiB) and zeroes the whole buffer
// first: a message just over 32 KiB costs a 1 MiB clear, so batches stay
// within 32 KiB, which already turns ~30 messages of 1 KiB adds into one.
const MaxBatchBytes = 16<<10 - 256

// BatchAddOverhead bounds the encoded size of one batched add besides its
// payload (the packed header).
const BatchAddOverhead = packedAddHeader

// Done is closed once the stream has ended (Err then says why).
func (s *AddStream) Done() <-chan struct{} { return s.recvDone }

// Err returns why the stream ended: nil while it runs or after a clean end.
func (s *AddStream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Outstanding returns the number of adds sent and not yet answered.
func (s *AddStream) Outstanding() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// Withdraw takes back the adds not yet answered for which match is true:
// done will not be called for them (their answers, if any come, are
// dropped). It returns them in the order they were sent.
func (s *AddStream) Withdraw(match func(*Add) bool, into []Add) []Add {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := s.head; i < len(s.pending); i++ {
		sl := &s.pending[i]
		if !sl.answered && match(&sl.add) {
			into = append(into, sl.add)
			sl.answered, sl.add, sl.sent = true, Add{}, time.Time{}
			s.n--
		}
	}
	s.trim()
	return into
}

// trim drops the answered adds at the front of the window; once they are
// at least half of pending it moves the window to the front of the array
// (amortized O(1) per add, and the array is reused); mu is held.
func (s *AddStream) trim() {
	for s.head < len(s.pending) && s.pending[s.head].answered {
		s.head++
	}
	if s.head == 0 || 2*s.head < len(s.pending) {
		return
	}
	n := copy(s.pending, s.pending[s.head:])
	clear(s.pending[n:])
	s.pending = s.pending[:n]
	s.base += uint64(s.head)
	s.head = 0
}

func (s *AddStream) recvLoop() {
	defer close(s.recvDone)
	var results []AddResult
	for {
		r, err := s.stream.Recv()
		if err == nil && len(r.Packed) > 0 {
			results, err = s.answerPacked(r.Packed, results[:0])
			for i := range results {
				s.done(results[i])
			}
			clear(results)
		} else if err == nil {
			err = errors.New("bookierpc: add stream: an answer not packed to packed adds")
		}
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			s.finish(err)
			return
		}
	}
}

// answerPacked matches the packed answers of b to their adds and appends
// their results to into.
func (s *AddStream) answerPacked(b []byte, into []AddResult) ([]AddResult, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(b) > 0 {
		var a packedAnswer
		var err error
		if a, b, err = nextPackedAnswer(b); err != nil {
			return into, err
		}
		if a.seq < s.base+uint64(s.head) {
			continue // withdrawn, and the window moved on
		}
		i := a.seq - s.base
		if i >= uint64(len(s.pending)) {
			return into, fmt.Errorf("bookierpc: add stream: an answer to add %d, which was not sent", a.seq)
		}
		sl := &s.pending[i]
		if sl.answered {
			continue // withdrawn
		}
		if sl.add.Ledger != a.ledger || sl.add.Entry != a.entry {
			return into, fmt.Errorf("bookierpc: add stream: add %d is ledger %d entry %d, answered as ledger %d entry %d",
				a.seq, sl.add.Ledger, sl.add.Entry, a.ledger, a.entry)
		}
		into = append(into, AddResult{Add: sl.add, Err: errorOf(a.status, a.msg), Sent: sl.sent, Answered: now})
		sl.answered, sl.add, sl.sent = true, Add{}, time.Time{}
		s.n--
	}
	s.trim()
	return into, nil
}

// finish ends the stream: every add still outstanding fails with err (or,
// after a clean end that left some unanswered, an error saying so).
func (s *AddStream) finish(err error) {
	s.mu.Lock()
	s.ended = true
	left := s.pending[s.head:]
	s.pending, s.head = nil, 0
	if err == nil && s.n > 0 {
		err = errors.New("bookierpc: the add stream ended with adds unanswered")
	}
	s.n = 0
	s.err = err
	s.mu.Unlock()
	s.cancel()
	for _, sl := range left {
		if !sl.answered {
			s.done(AddResult{Add: sl.add, Err: fmt.Errorf("bookierpc: add stream: %w", err)})
		}
	}
}

// Close closes the sending side, waits until every add has been answered
// (or the stream failed) and returns the stream's error: nil after a clean
// end.
func (s *AddStream) Close() error {
	s.sendMu.Lock()
	if !s.closed {
		s.closed = true
		s.stream.CloseSend()
	}
	s.sendMu.Unlock()
	<-s.recvDone
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Abort cancels the stream at once: adds not yet answered fail with the
// cancellation.
func (s *AddStream) Abort() {
	s.cancel()
	<-s.recvDone
}
