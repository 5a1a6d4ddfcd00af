// Package journal will own Quire's replicated, BookKeeper-style log: the
// ledger client (ensemble, write and ack quorums, LAC, fencing, recovery),
// logs (ordered ledger chains with rollover) and record framing. See
// DESIGN.md, "Journal".
//
// The ledger client's protocol core is in journal/ledger: pure state
// machines for the writer (striping, ack quorum, LAC, ensemble changes,
// close), recovery (fencing coverage, fencing reads, explicit-negative
// quorum, write-back, close) and readers; the driver that runs them over
// bookierpc and meta/schema is still to come.
//
// The bookie's storage engine is in journal/bookie: journal with group
// commit on preallocated or recycled files, entry logs, a Pebble index,
// checkpoints, fencing, explicit LACs, deletion with compaction, and
// cookies. Not built yet: the bookie's gRPC service and its place in
// `quire start` / `quire bookie` (the rest of "Journal, part 1: the
// bookie"), and the client of "Journal, part 2: replicated ledgers and
// logs". Until then the node runs no bookie and the journal engine is not
// offered.
package journal
