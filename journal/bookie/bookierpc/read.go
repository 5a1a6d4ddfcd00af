package bookierpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie"
)

// A ReadEntries stream carries entries in messages of about
// readMessageBytes of payload (fewer per message means more per-message
// overhead; more means more memory per stream), at most readMessageEntries
// entries each.
const (
	readMessageBytes   = 512 << 10
	readMessageEntries = 2048
	entryOverhead      = 24 // an Entry's fields besides the payload, roughly
)

// records holds the buffers of packed ReadEntries messages, reused once a
// message is sent.
var records recordsPool

type recordsPool struct{ p sync.Pool }

// get returns an empty buffer for a message, with room for at least n
// bytes.
func (r *recordsPool) get(n int) []byte {
	if b, ok := r.p.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:0]
	}
	return make([]byte, 0, max(readMessageBytes, n))
}

func (r *recordsPool) put(b []byte) {
	if cap(b) == readMessageBytes {
		r.p.Put(&b)
	}
}

// sendError marks a failed Send inside ReadRange's callback.
type sendError struct{ err error }

func (e sendError) Error() string { return e.err.Error() }

// ReadEntries implements journalv1.BookieServer: bookie.ReadRange (or,
// packed, bookie.ReadRangeRecords), its entries batched into messages, its
// outcome in the last one.
func (s *Server) ReadEntries(req *journalv1.ReadEntriesRequest, stream grpc.ServerStreamingServer[journalv1.ReadEntriesResponse]) error {
	b, _, err := s.bookie()
	if err != nil {
		return err
	}
	resp := &journalv1.ReadEntriesResponse{Status: journalv1.Status_STATUS_OK}
	if req.Packed {
		err = b.ReadRangeRecords(req.Ledger, req.FirstEntry, req.LastEntry, req.Stride, func(_ uint64, rec []byte) error {
			// A record that does not fit goes in the next message (alone,
			// when it is larger than a message).
			if len(resp.Records) > 0 && len(resp.Records)+len(rec) > readMessageBytes {
				if err := stream.Send(resp); err != nil {
					return sendError{err}
				}
				// Send has encoded it (a bookie's gRPC server has no stats
				// handler that would keep the message): its buffer serves
				// the next one.
				resp = &journalv1.ReadEntriesResponse{Status: journalv1.Status_STATUS_OK, Records: resp.Records[:0]}
			}
			if resp.Records == nil {
				resp.Records = records.get(len(rec))
			}
			resp.Records = append(resp.Records, rec...)
			return nil
		})
		defer records.put(resp.Records)
		return s.endRead(stream, resp, err)
	}
	size := 0
	err = b.ReadRange(req.Ledger, req.FirstEntry, req.LastEntry, req.Stride, func(e uint64, p []byte) error {
		resp.Entries = append(resp.Entries, &journalv1.Entry{Entry: e, Payload: p, Crc32C: CRC32C(p)})
		size += len(p) + entryOverhead
		if size < readMessageBytes && len(resp.Entries) < readMessageEntries {
			return nil
		}
		if err := stream.Send(resp); err != nil {
			return sendError{err}
		}
		resp = &journalv1.ReadEntriesResponse{Status: journalv1.Status_STATUS_OK}
		size = 0
		return nil
	})
	return s.endRead(stream, resp, err)
}

// endRead sends resp, the last message of a ReadEntries stream, with the
// read's outcome err — unless err is a failed Send, which ends the stream.
func (s *Server) endRead(stream grpc.ServerStreamingServer[journalv1.ReadEntriesResponse], resp *journalv1.ReadEntriesResponse, err error) error {
	var se sendError
	if errors.As(err, &se) {
		return se.err
	}
	resp.End = true
	resp.Status, resp.Message = statusOf(err), message(err)
	var me *bookie.MissingEntryError
	if errors.As(err, &me) {
		resp.MissingEntry = me.Entry
	}
	return stream.Send(resp)
}

// errNoEnd is a ReadEntries stream that ended without its last message.
var errNoEnd = errors.New("bookierpc: read entries: the stream ended without its outcome")

// ReadEntries reads the entries first, first+stride, ... up to last of a
// ledger (stride 0 means 1) in one stream, calling fn with each in entry
// order, its payload checked against the crc32c the bookie sent (packed:
// its entry-log record's, stored with it). It returns:
//
//   - nil once fn has seen every entry of the range;
//   - a *StatusError matching bookie.ErrNoSuchEntry when the bookie
//     stopped at the first entry of the range it does not hold — the one
//     after the last fn saw (first, if none) — or bookie.ErrNoSuchLedger:
//     explicit negatives;
//   - another *StatusError (the bookie failed to read), fn's error, or a
//     gRPC or protocol error (ErrBadCRC, entries out of order, a stream
//     cut short): no answer about the entries fn has not seen, to be
//     treated like a timeout.
//
// fn must not modify or keep the payload beyond the call unless it owns
// it: each payload is the caller's, but they may share memory.
func (c *Client) ReadEntries(ctx context.Context, ledger, first, last, stride uint64, fn func(entry uint64, payload []byte) error) error {
	if stride == 0 {
		stride = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.rpc.ReadEntries(ctx, &journalv1.ReadEntriesRequest{Ledger: ledger, FirstEntry: first, LastEntry: last, Stride: stride, Packed: true})
	if err != nil {
		return err
	}
	next, done := first, first > last // done: every entry of the range was seen
	for {
		r, err := st.Recv()
		if err == io.EOF {
			return errNoEnd
		}
		if err != nil {
			return err
		}
		// One entry read: checks its place, passes it to fn, advances.
		got := func(e uint64, p []byte) error {
			if done || e != next {
				return fmt.Errorf("bookierpc: read entries of ledger %d: entry %d where %s was due", ledger, e, due(next, done))
			}
			if err := fn(e, p); err != nil {
				return err
			}
			if last-next < stride {
				done = true
			} else {
				next += stride
			}
			return nil
		}
		for _, e := range r.Entries {
			if CRC32C(e.Payload) != e.Crc32C {
				return fmt.Errorf("%w: ledger %d entry %d read back", ErrBadCRC, ledger, e.Entry)
			}
			if err := got(e.Entry, e.Payload); err != nil {
				return err
			}
		}
		for recs := r.Records; len(recs) > 0; {
			l, e, p, n, ok := bookie.DecodeRecord(recs)
			if !ok {
				return fmt.Errorf("%w: ledger %d: a record read back after %s (%d bytes left in the message)", ErrBadCRC, ledger, due(next, done), len(recs))
			}
			if l != ledger {
				return fmt.Errorf("bookierpc: read entries of ledger %d: a record of ledger %d", ledger, l)
			}
			if err := got(e, p[:len(p):len(p)]); err != nil {
				return err
			}
			recs = recs[n:]
		}
		if !r.End {
			continue
		}
		err = errorOf(r.Status, r.Message)
		switch {
		case err == nil && !done:
			return fmt.Errorf("bookierpc: read entries of ledger %d: the bookie ended the read at entry %d of [%d, %d] without saying why", ledger, next, first, last)
		case r.Status == journalv1.Status_STATUS_NO_SUCH_ENTRY && (done || r.MissingEntry != next):
			return fmt.Errorf("bookierpc: read entries of ledger %d: the bookie says entry %d is missing where %s was due", ledger, r.MissingEntry, due(next, done))
		}
		return err
	}
}

func due(next uint64, done bool) string {
	if done {
		return "the end"
	}
	return fmt.Sprintf("entry %d", next)
}
