// Package journal will own Quire's replicated, BookKeeper-style log: the
// ledger client (ensemble, write and ack quorums, LAC, fencing, recovery),
// logs (ordered ledger chains with rollover) and record framing, with the
// bookie storage server in journal/bookie. See DESIGN.md, "Journal".
//
// Not built yet: tracked by the issues "Journal, part 1: the bookie" and
// "Journal, part 2: replicated ledgers and logs". Until then the node runs no
// bookie and the journal engine is not offered.
package journal
