// Package client is the driver of Quire's ledger client (DESIGN.md,
// "Journal"): it runs journal/ledger's pure state machines over real
// bookies (journal/bookie/bookierpc) and ledger metadata in meta
// (meta/schema), adding the goroutines, clocks, connections and CAS calls
// the machines leave out.
//
// # Usage
//
//	cl, _ := client.New(client.Options{Meta: kv, Directory: client.MetaDirectory{Store: schema.Store{KV: kv}}})
//	w, _ := cl.CreateLedger(ctx, 3, 2, 2)          // E, Qw, Qa
//	e, err := w.Append(ctx, data)                   // waits for the ack
//	f, err := w.AppendAsync(ctx, data)              // pipelined; f.Result() later
//	err = w.Close(ctx)                              // CAS CLOSED, last entry = LAC
//
//	r, _ := cl.OpenForRead(ctx, id, 0)              // non-fencing; tails an open ledger
//	e, data, err := r.Next(ctx)                     // io.EOF after a closed ledger's end
//
//	last, err := cl.Recover(ctx, id)                // fence, recover, write back, CAS CLOSED
//	r, err = cl.OpenForRecovery(ctx, id)            // Recover, then read from 0
//
// # Placement
//
// A BookieDirectory lists the live bookies (MetaDirectory: nodes with the
// "bookie" role whose /live key exists, id = address = the node's inner
// gRPC address, failure domain = the node; StaticDirectory for tests and
// tools). CreateLedger picks E bookies on E distinct nodes, rotating the
// starting point per ledger, or fails with ErrNotEnoughBookies: a ledger
// never keeps two copies on one node. Replacements offered to the writer
// on a failure are live bookies on nodes not used by the rest of the
// ensemble. The ledger id comes from meta's counter and the record is
// created OPEN by schema.Store.CreateLedger.
//
// # Writer
//
// One goroutine per LedgerWriter (its event loop) owns the ledger.Writer.
// Its inputs arrive through an unbounded mailbox, so that no network
// callback ever blocks on a busy loop: appends (AppendAsync; at most
// Options.MaxInflight unacknowledged, then it blocks), add answers, CAS
// outcomes, directory refreshes (about once a second), Close and Abandon;
// a ticker (Options.TickInterval) drives Tick (explicit LAC of an idle
// writer) and add timeouts. Effects: SendAdd goes to the writer's link to
// the bookie, over the Client's one AddStream per bookie (bookieConn),
// shared by all its writers and recoveries: one goroutine per bookie sends
// in queue order whatever has queued since its last send, of any ledger, in
// one packed AddBatch message (up to bookierpc.MaxBatchBytes), and routes
// every answer back to its link (the add carries its link as its Tag); a
// stream that broke (or a bookie answering CLOSED, shutting down) is
// redialled with backoff and the adds it left unanswered are resent on the
// new one (see bookieConn for why that is safe); answers queue in the link
// and reach the loop as one event per burst (the link wakes the loop when
// its queue stops being empty), not one per add. An entry's CRC-32C is
// computed once, by AppendAsync, for all its copies. WriteLAC is a
// best-effort unary call; CASMetadata runs
// schema.Store.CASLedger in a goroutine (on a version mismatch it reads the
// ledger back; if what is stored equals what it wrote — an earlier attempt
// whose answer was lost — it is a success; other meta errors are retried
// with backoff); Acked and FailAdds complete Futures in entry order.
//
// Failures: a bookie's refusal other than FENCED (FAILED, TOO_LARGE,
// CORRUPT, ...) is StatusUnknown: the link to that bookie is cut (its
// adds not yet answered fail at once; the shared stream goes on) and the
// machine replaces the bookie (ensemble change: new fragment from LAC+1,
// CAS, resend). A link with adds unanswered for Options.AddTimeout (its
// bookie unreachable, the link still redialling) is failed the same way
// (BookieFailed) if the machine can replace it (Writer.CanReplace);
// otherwise the link keeps reconnecting for another AddTimeout, so that a
// bookie restarting at the same id is written to again. A writer that
// stays without a replacement (every other live bookie failed it before)
// stops after AddTimeout: its appends fail with ledger.ErrStopped, ambiguous,
// and its owner takes over with a new ledger. FENCED, or a
// CAS that finds the ledger no longer OPEN, stops the writer: pending and
// later appends fail with ErrFenced, which is ambiguous (the entry may or
// may not survive the recovery), as is ErrAbandoned.
//
// Each Future keeps when its append passed each stage (Future.Trace,
// trace.go): taken by the loop, its quorum-completing copy sent on and
// answered by its bookie stream, the answer handled by the loop, and the
// acknowledgement (after every lower entry); the stages add up to the add
// latency. With Options.Registerer they are also histograms
// (quire_journal_client_add_stage_seconds, one append in 8).
//
// # Reader and recovery
//
// A LedgerReader reads a backlog (a closed ledger, or RangeMinEntries or
// more up to an open ledger's LAC) with range reads: ReadEntries streams,
// one per residue class e mod E, fetched in chunks ahead of Next, falling
// back to single reads along the write set where a stream stops (see
// reader.go). Past the backlog it runs ledger.Reader inside Next: reads go
// out as unary calls (one goroutine each, up to ReaderWindow entries
// ahead, falling back along each entry's write set), the LAC of the last
// fragment's bookies is polled every tick while the ledger is open, and
// the metadata is re-read every ten ticks so that a close ends the tail at
// the last entry.
//
// Recover runs ledger.Recovery to completion in the caller's goroutine:
// fencing LAC reads and fencing entry reads as unary calls with
// Options.RequestTimeout (an unanswered request is StatusUnknown, never a
// negative), write-backs through per-bookie links with the recovery flag,
// CASes as above. The bookies that may replace one that fails a
// write-back (ledger.RecoveryOptions.Available) are the live ones on
// nodes the last fragment does not use, read from the directory when
// recovery starts. Aborted becomes an error matching ErrRecoveryAborted;
// nothing unsafe was done and Recover may simply be called again.
//
// # Quarantine
//
// A bookie that answers an add with STATUS_FAILED (its storage failed: it
// takes no writes until restarted, though it stays live for reads) is
// kept out of new ensembles for Options.QuarantineTime while the others
// suffice, and listed last among replacements (quarantine.go).
//
// # Re-replication
//
// Rereplicate restores the copies a ledger kept on lost bookies in its
// final fragments (all of a CLOSED ledger, all but the writer's last of
// an OPEN one): per fragment naming one, a live bookie on a node the
// fragment does not use receives every entry whose write set held the
// lost one (strided range reads from the write set's other members,
// recovery adds, synced), then the metadata is CASed with the
// replacement (an OPEN ledger's writer adopts it at its next CAS). An
// Auditor (NewAuditor, Check, Run) counts a bookie lost once the
// directory has missed it for a grace period and re-replicates every
// ledger naming it (rereplicate.go); Run audits only while it holds
// schema.KeyAuditor, so that one node's auditor works at a time.
//
// # Logs
//
// A shard's log is schema.Log: its ledger ids in order. Offsets are dense
// across ledgers: a record's offset is the number of entries of the
// closed ledgers before its own plus its entry id (computed from each
// ledger's metadata; retention keeps the list short). OpenLogWriter takes
// a log over as its new writer: Recover the last two ledgers (a rollover
// that crashed between CAS-append and close leaves two open), create a
// ledger and CAS-append it against the log version read (ErrLogConflict
// if another writer got there first). Rollover (RollEntries, RollBytes,
// RollAge) creates the next ledger, CAS-appends it, closes the old one —
// waiting for its appends, so its last entry and hence the next base
// offset are final — and only then appends to the new one; appends wait
// during a rollover. LogReader reads from an offset on, opens each ledger
// in turn (tailing the last one, waiting for an open ledger in the middle
// to be closed by recovery) and polls the log for new ledgers.
//
// Retention drops whole closed ledgers from the front of a log
// (LogWriter.DropFirst for the log's writer, DropLogLedgers otherwise):
// CAS the shorter list with Log.Trimmed raised by their entries — offsets
// stay where they were — then delete each ledger from its bookies and its
// metadata from meta (DeleteLedger; a crash in between leaves garbage, not
// data: the ledger is no longer in any log). A LogReader asked for an
// offset below Log.Trimmed fails with ErrTrimmed. DeleteLog removes a
// whole log. ReadLedgerEntry reads one entry with metadata the caller
// holds (the journal shard engine reads entries at random this way).
//
// # Tests
//
// The tests run a single-node meta in process (in-memory FS) and 2–5 real
// bookies, each served over gRPC on 127.0.0.1:0, and check DESIGN.md's
// journal invariants on every ledger they close (checkInvariants): no
// acknowledged entry lost or changed; the closed ledger's last entry ≥
// every acknowledged entry; entries read back densely in write order; no
// two values at one offset (every copy in the write set agrees, and equals
// what the writer appended at that entry). Scenarios: pipelined appends
// with a tailing reader (explicit LAC of an idle writer), a bookie killed
// mid-stream (ensemble change, no append fails), a bookie of an ensemble
// of all three bookies restarted idle and mid-stream (the link reconnects:
// no append fails, no ensemble change), a writer abandoned with
// adds in flight and recovered (E/Qw/Qa 3/2/2, 3/3/2, 5/3/2), recovery
// while the old writer keeps appending (it is fenced), a recovery that
// aborts with two of three bookies down and succeeds once they return,
// a recovery at Qw = Qa that replaces a dead bookie of the ensemble,
// and a log that rolls over, loses its writer mid-stream and is taken
// over (dense offsets, tail across boundaries, every non-empty ledger in
// the log).
package client
