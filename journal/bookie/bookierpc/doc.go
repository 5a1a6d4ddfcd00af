// Package bookierpc serves a journal/bookie over gRPC (the journal.v1.Bookie
// service of internal/proto/journal/v1) and is its Go client.
//
// # Server
//
//	srv := bookierpc.NewServer(bookierpc.ServerOptions{Registerer: reg})
//	journalv1.RegisterBookieServer(grpcServer, srv) // before grpcServer.Serve
//	srv.Attach(b)                                    // once the bookie is open
//	...
//	b.Close(); srv.Detach()                          // answer what was in flight, then end streams
//
// Every answer carries a typed journalv1.Status: bookie errors map to
// NO_SUCH_ENTRY, NO_SUCH_LEDGER, FENCED, TOO_LARGE, FAILED, CLOSED, CORRUPT
// (ERROR for anything else), and an add whose payload does not match its
// crc32c is answered BAD_CRC without reaching the bookie. gRPC errors are
// reserved for "no answer": UNAVAILABLE while no bookie is attached, and
// the transport's own (deadline, cancellation, broken connection).
//
// AddEntries is one bidirectional stream per writer. A receiver goroutine
// reads adds, checks CRCs and hands them to Bookie.AddEntry; the bookie's
// callbacks (on its journal goroutine, never blocking) queue answers, which
// the handler's goroutine sends in completion order. Adds travel in batches
// (AddRequest.packed, up to MaxBatchBytes per message: a fixed binary
// header per add, decoded with no allocation per add, the payloads aliasing
// the message; the nested AddRequest.batch and single-add forms still
// work) and answers likewise (AddResponse.packed to packed adds,
// AddResponse.batch to the others: whatever completed since the last send,
// up to MaxAnswersPerMessage): per-message costs of gRPC — framing, a
// pooled buffer, a write — are paid once per batch, not once per add. The
// server numbers a stream's adds in arrival order and a packed answer
// carries the number, so the client's AddStream finds the add it answers in
// a window of adds in flight, without a map. Flow control: the
// bytes of adds received and not yet answered (payload + AddOverhead each)
// are bounded per stream by ServerOptions.StreamInflightBytes; at the bound
// the receiver stops reading, so HTTP/2 flow control pushes back on the
// writer and nothing is buffered without limit. When the client closes its
// side the stream ends after the last answer; when the client cancels, the
// handler returns at once and answers still due are dropped (the client
// reports those adds as failed with the stream's error — ambiguous, like a
// timeout).
//
// ReadEntries is one server stream per range read (Bookie.ReadRange):
// entries in order, batched into messages of about 512 KiB, each with its
// crc32c, and a last message (end=true) carrying the outcome — OK,
// NO_SUCH_ENTRY with the entry where the bookie stopped, NO_SUCH_LEDGER,
// or an error status. A stream holds at most one read batch of the
// bookie's (2 MiB) and the message being filled; gRPC flow control paces
// it to the reader.
//
// # Client
//
//	c, err := bookierpc.Dial("10.0.0.1:1228")
//	s, err := c.AddStream(ctx, func(r bookierpc.AddResult) { ... }) // one result per add
//	err = s.Add(bookierpc.Add{Ledger: 1, Entry: 0, LAC: -1, Payload: p})
//	err = s.AddBatch(adds) // several adds, one packed message
//	err = s.Close() // waits for every result
//	data, err := c.ReadEntry(ctx, 1, 0, false) // errors.Is(err, bookie.ErrNoSuchEntry) when absent
//	err = c.ReadEntries(ctx, 1, 0, 999, 3, func(e uint64, p []byte) error { ... }) // entries 0, 3, 6, ...
//
// ReadEntries checks the stream against the range it asked for (order,
// crc32c, an outcome that fits); a stream cut short or out of order is an
// error that is not a *StatusError — no answer about the entries not
// seen.
//
// Client methods return nil, a *StatusError (an answer from the bookie;
// errors.Is matches the journal/bookie sentinel of its status, StatusOf
// returns the status), or a gRPC error (no answer: the ledger client must
// treat it like a timeout, never as a negative).
package bookierpc
