// Package ledger is the protocol core of Quire's ledger client: pure state
// machines for a ledger's writer, its recovery and its readers (DESIGN.md,
// "Journal"; the TLA+-checked BookKeeper protocol of
// github.com/Vanlightly/bookkeeper-tlaplus, not BookKeeper ≤ 4.13). In
// the manner of etcd-io/raft's RawNode there are no goroutines, no I/O,
// no clocks and no meta or gRPC calls here: inputs (bookie answers, CAS
// outcomes, ticks, caller requests) go in through methods, and each method
// returns the effects the driver must carry out, in order.
//
// # Writer
//
//	w, _ := ledger.NewWriter(md, availableBookies)   // md: a ledger just created, OPEN
//	entry, effs, err := w.Add(data)                  // SendAdd × Qw
//	effs = w.AddResult(bookie, entry, ledger.StatusOK)
//	effs = w.BookieFailed(bookie)                    // CASMetadata (ensemble change)
//	effs = w.CASDone(ledger.CASResult{OK: true, Version: v})
//	effs = w.Tick()                                  // WriteLAC × E when idle
//	effs, err = w.Close()                            // CASMetadata (CLOSED) when settled
//
// Striping: entry e goes to WriteSet(ensemble, Qw, e), the Qw bookies from
// index e mod E of the fragment holding e. Entry e is acknowledged (effect
// Acked) when Qa distinct bookies of that write set acked it and every
// lower entry is acknowledged; the LAC is the highest such entry and rides
// on every SendAdd. A tick in which no add was sent and the LAC moved
// sends the LAC explicitly (WriteLAC) to the ensemble.
//
// Ensemble change: an unknown answer (timeout, error) from a bookie of the
// ensemble, or BookieFailed, replaces it by the first available bookie
// that is neither in the ensemble nor failed before, in a new fragment
// from LAC+1 (the last fragment is rewritten instead when it holds no
// entry yet), proposed by CASMetadata. While the CAS is in flight adds
// are held and nothing is acknowledged (the fragment of entries > LAC is
// not settled; BookKeeper's changingEnsemble does the same); acks from
// bookies that left an entry's write set are dropped. On success pending
// adds go to the bookies of their new write sets that do not have them;
// on failure with the ledger no longer OPEN every pending add fails
// (FailAdds, ErrFenced) and the writer stops (Stopped); on a version
// mismatch with the ledger still OPEN the writer retries on the current
// metadata. With no replacement the writer stalls until SetAvailable
// (the driver decides how long to wait, then may Stop).
//
// A FENCED answer is never an ack and is as ambiguous as a timeout: the
// ledger is being recovered, so the writer fails every pending add and
// stops. Close waits for pending adds to be acknowledged, then CASes
// CLOSED with last entry = LAC.
//
// # Recovery
//
//	rec, effs, _ := ledger.NewRecovery(md, ledger.RecoveryOptions{})
//	effs = rec.CASDone(res)                          // after CAS IN_RECOVERY: ReadLAC{Fence} × E
//	effs = rec.LACResult(bookie, status, lac)        // ReadEntry{Fence} × Qw per entry
//	effs = rec.ReadResult(bookie, entry, status, data)
//	effs = rec.AddResult(bookie, entry, status)      // write-backs; then CAS CLOSED
//
// Steps: CAS IN_RECOVERY (adopting the current metadata and retrying on a
// version mismatch); fence the last fragment's E bookies with fencing LAC
// reads; read with fence from max(highest LAC seen, first entry of the last
// fragment − 1) + 1; write each recovered entry back (recovery adds) until
// Qa bookies of its write set hold it — a bookie that fails a write-back
// is replaced by one of RecoveryOptions.Available in a new fragment from
// the recovery's own LAC + 1, kept locally (reads still follow the
// fragments recovery started from) and written with the close, as the
// TLA+ spec's recovery client does; without a replacement an entry may
// lose Qw − Qa bookies before the recovery aborts —; CAS CLOSED with the
// last recovered entry (and those fragments). The outcome is Recovered{LastEntry} or Aborted{Reason}; an abort
// changes nothing unsafe and the driver may start again from fresh
// metadata. Entries are read in order with up to ReadAhead in flight;
// reads and write-backs overlap (the TLA+ spec separates them only to
// keep its state space small).
//
// # Quorum conditions
//
// Fencing is complete when FenceCovered holds: in every write set of the
// last fragment (the E sets of Qw consecutive bookies), fewer than Qa
// bookies are not known fenced (a fenced bookie answered the fencing
// ReadLAC OK). Justification: the writer acknowledges an entry only on Qa
// acks from one write set, and a fenced bookie refuses non-recovery adds,
// so afterwards no new add can be acknowledged. This is the TLA+ spec's
// quorum coverage (QuorumCoverage.tla, "no ack quorum of the cohort is
// left without the property") with the cohort taken per write set, as
// BookKeeper's RoundRobinDistributionSchedule coverage check does; for
// E = Qw it is "(E − Qa) + 1 bookies fenced". Fencing that ends with every
// bookie answered and coverage not reached aborts.
//
// An entry is present as soon as any bookie of its write set returns it.
// It is absent only on NegativeQuorum = (Qw − Qa) + 1 explicit
// NoSuchEntry answers from its write set: an acknowledged entry is synced
// on at least Qa of its Qw bookies, so at most Qw − Qa can truthfully deny
// it. Timeouts, errors and FENCED are never negatives; an entry that every
// bookie answered without being found or denied aborts the recovery. The
// first absent entry ends the ledger: the writer acknowledges a prefix, so
// nothing after it was acknowledged either.
//
// Recovery reads fence too. The two BookKeeper ≤ 4.13 defects the TLA+
// spec found are avoided: (1) fencing only through LAC reads — a bookie
// whose fencing request was lost or delayed could answer NoSuchEntry to a
// non-fencing recovery read and then accept the old writer's add,
// completing an ack quorum behind recovery's back (the scenario scripts
// and the simulation test show it); with fencing reads every negative
// comes from a fenced bookie, so the denied entry can never be acked
// later; (2) starting from −1 instead of the last fragment — entries of
// earlier fragments asked of the last fragment's bookies look absent and
// acknowledged entries are truncated. Reads here always go to the write
// set of the fragment holding the entry, and start no lower than the last
// fragment's first entry (whose predecessor the writer had acknowledged
// when it began that fragment).
//
// # Readers
//
// ReadOrder gives the bookies to try for an entry (its write set, healthy
// ones first); Readable bounds what a reader may read (the LAC of an open
// ledger, the last entry of a closed one). Reader is a small non-fencing
// state machine that reads in order with a window, falls back along the
// read order, and tails an open ledger by polling the LAC on Tick.
//
// # Types and effects
//
// Metadata mirrors meta/schema.Ledger field for field (State values are
// identical strings) plus the meta Version a CAS names; this package does
// not import meta so that it stays pure. Effects: SendAdd, WriteLAC,
// ReadLAC, ReadEntry, CASMetadata (driver → meta), Acked, FailAdds,
// Closed, Stopped (writer → its caller), Recovered, Aborted, Deliver.
// Status is what the machines need of a bookie's answer: OK, NoSuchEntry
// (NO_SUCH_ENTRY or NO_SUCH_LEDGER), Fenced, Unknown (any gRPC error or
// other status — bookierpc.StatusOf returns STATUS_UNSPECIFIED for those).
//
// # Driving a machine
//
// A driver (journal's ledger client, next to this package) owns one
// machine per open ledger handle and one goroutine (or a mutex) feeding it:
//
//	for {
//		select {
//		case data := <-adds:   _, effs, err = w.Add(data)
//		case r := <-results:   effs = w.AddResult(r.bookie, r.entry, statusOf(r.err))
//		case r := <-casDone:   effs = w.CASDone(r)
//		case <-ticker.C:       effs = w.Tick() // plus add timeouts → w.BookieFailed
//		}
//		for _, e := range effs { execute(e) } // sends are async; answers come back above
//	}
//
// execute maps SendAdd to a per-bookie bookierpc.AddStream (one stream per
// bookie, results fed back), ReadLAC/ReadEntry/WriteLAC to the Client's
// unary calls with a deadline, CASMetadata to schema.Store.CASLedger (on
// meta.ErrVersionMismatch read the ledger back and pass it as
// CASResult.Current), and Acked/FailAdds/Closed/Stopped to the callers'
// futures. Timeouts are the driver's: an add unanswered for too long is
// BookieFailed; a read or LAC read unanswered is StatusUnknown. The driver
// must convert schema.Ledger ↔ Metadata and never reorder a machine's
// inputs relative to one another beyond what the network already does.
package ledger
