package ledger

import (
	"bytes"
	"fmt"
	"slices"
)

// RecoveryOptions tune a Recovery.
type RecoveryOptions struct {
	// ReadAhead is how many entries past the first undecided one may have
	// recovery reads in flight (default 8; 1 reads one entry at a time).
	ReadAhead int
	// Available lists the bookies that may replace one that fails a
	// write-back, in order of preference (ensemble change during
	// recovery). With none, a failed write-back that leaves an entry
	// short of Qa aborts.
	Available []BookieID
}

// Recovery is the pure state machine that recovers and closes a ledger
// whose writer may be gone (DESIGN.md, "Journal"; the TLA+-checked
// protocol of Vanlightly/bookkeeper-tlaplus, BookKeeperProtocol.tla):
//
//  1. CAS the metadata to IN_RECOVERY (a closed ledger needs nothing).
//  2. Fence the last fragment's bookies with fencing LAC reads until
//     FenceCovered holds: no write set has Qa unfenced bookies left, so the
//     old writer can no longer complete an add.
//  3. Read (with fence) from max(highest LAC seen, first entry of the last
//     fragment − 1) + 1 on. An entry is present when any bookie of its
//     write set returns it, absent when NegativeQuorum of them answer
//     NoSuchEntry explicitly; the first absent entry ends the ledger. An
//     entry that is neither (every bookie answered, some with timeouts or
//     errors) aborts the recovery: a timeout is never a negative.
//  4. Write every recovered entry back (recovery adds) until Qa bookies of
//     its write set hold it. A bookie that fails a write-back (any answer
//     but OK) is replaced, as the writer replaces one: a new fragment from
//     the recovery's own LAC + 1 (the last entry up to which every entry
//     is back on Qa bookies) with the first available bookie in its place,
//     and the entries not yet settled go to their new write sets. The
//     change is kept locally, not CASed: reads still go to the fragments
//     recovery started from (the spec's recovery ensemble), and the new
//     fragments are written with the close (BookKeeperProtocol.tla,
//     RecoveryClientChangesEnsemble, RecoveryClientClosesLedger). Without
//     a replacement the recovery aborts. So with Qw = Qa, where no
//     write-back may fail, a dead bookie of the ensemble no longer blocks
//     recovery as long as another bookie is available.
//  5. CAS CLOSED with the last recovered entry as last entry (and the
//     fragments of step 4).
//
// Recovery never guesses: every way out other than Recovered is Aborted,
// after which the driver may start a new Recovery from fresh metadata.
type Recovery struct {
	md    Metadata
	opts  RecoveryOptions
	phase recPhase

	ens       []BookieID // last fragment's ensemble
	fragFirst int64
	answered  map[BookieID]bool // fencing LAC reads answered
	fenced    map[BookieID]bool
	maxLAC    int64

	start    int64 // first entry read
	nextRead int64 // next entry to send reads for
	decided  int64 // first entry not yet decided
	endKnown bool
	reads    map[int64]*readState

	// Write-backs. wmd is the metadata they follow: md plus the fragments
	// of ensemble changes made during recovery (CASed only with the close).
	wmd       Metadata
	available []BookieID
	failed    map[BookieID]bool  // bookies that failed a write-back
	wlac      int64              // every entry start..wlac is back on Qa bookies
	wb        map[int64]*wbState // write-backs of entries wlac+1 .. decided-1
}

type recPhase uint8

const (
	recCASRecovering recPhase = iota
	recFencing
	recReading // reads and write-backs
	recClosing
	recDone
)

func (p recPhase) String() string {
	return [...]string{"cas-in-recovery", "fencing", "reading", "closing", "done"}[p]
}

type readState struct {
	ws       []BookieID
	answered []BookieID
	neg      int
	have     bool
	data     []byte
}

type wbState struct {
	data  []byte
	acks  []BookieID // bookies of the entry's current write set that hold it
	sent  []BookieID // bookies of the entry's current write set it was sent to
	fails []BookieID // bookies of the entry's current write set that failed it (no replacement)
}

// NewRecovery starts recovering the ledger described by md (as read from
// meta). For a CLOSED ledger the only effect is Recovered with its last
// entry; otherwise the first effect is the CAS to IN_RECOVERY.
func NewRecovery(md Metadata, opts RecoveryOptions) (*Recovery, []Effect, error) {
	if err := md.Validate(); err != nil {
		return nil, nil, err
	}
	if opts.ReadAhead <= 0 {
		opts.ReadAhead = 8
	}
	r := &Recovery{md: md.Clone(), opts: opts, maxLAC: -1, available: slices.Clone(opts.Available)}
	if md.State == StateClosed {
		r.phase = recDone
		return r, []Effect{Recovered{LastEntry: md.LastEntry}}, nil
	}
	return r, r.casRecovering(nil), nil
}

// String summarizes the recovery's state.
func (r *Recovery) String() string {
	s := fmt.Sprintf("phase=%s md=[%s]", r.phase, r.md)
	if r.phase >= recReading {
		s += fmt.Sprintf(" start=%d decided=%d", r.start, r.decided)
		if len(r.wmd.Fragments) != len(r.md.Fragments) || !slices.Equal(r.wmd.Fragments[len(r.wmd.Fragments)-1].Bookies, r.md.Fragments[len(r.md.Fragments)-1].Bookies) {
			s += " write-back " + r.wmd.String()
		}
	}
	return s
}

// Done reports whether the recovery ended (Recovered or Aborted emitted).
func (r *Recovery) Done() bool { return r.phase == recDone }

func (r *Recovery) casRecovering(out []Effect) []Effect {
	nm := r.md.Clone()
	nm.State = StateInRecovery
	r.phase = recCASRecovering
	return append(out, CASMetadata{Expected: r.md.Version, New: nm})
}

func (r *Recovery) abort(out []Effect, format string, args ...any) []Effect {
	r.phase = recDone
	return append(out, Aborted{Reason: fmt.Sprintf(format, args...)})
}

// CASDone reports the outcome of the recovery's CASMetadata effect.
func (r *Recovery) CASDone(res CASResult) []Effect {
	switch r.phase {
	case recCASRecovering:
		if !res.OK {
			if res.Current.State == StateClosed {
				r.phase = recDone
				return []Effect{Recovered{LastEntry: res.Current.LastEntry}}
			}
			// The writer changed its ensemble (or another recovery started):
			// take the fragments as they are now and try again.
			r.md = res.Current.Clone()
			return r.casRecovering(nil)
		}
		r.md.State, r.md.Version = StateInRecovery, res.Version
		last := r.md.Fragments[len(r.md.Fragments)-1]
		r.ens, r.fragFirst = last.Bookies, last.FirstEntry
		r.answered, r.fenced = map[BookieID]bool{}, map[BookieID]bool{}
		r.phase = recFencing
		var out []Effect
		for _, b := range r.ens {
			out = append(out, ReadLAC{Bookie: b, Fence: true})
		}
		return out
	case recClosing:
		r.phase = recDone
		if res.OK {
			return []Effect{Recovered{LastEntry: r.decided - 1}}
		}
		if res.Current.State == StateClosed {
			// Another recovery closed it first; it followed the same rules.
			return []Effect{Recovered{LastEntry: res.Current.LastEntry}}
		}
		return r.abort(nil, "metadata changed during recovery (now %s)", res.Current)
	}
	return nil
}

// LACResult reports a bookie's answer to a fencing ReadLAC: StatusOK with
// its LAC means it is fenced; anything else leaves it unknown.
func (r *Recovery) LACResult(b BookieID, st Status, lac int64) []Effect {
	if r.phase != recFencing || !slices.Contains(r.ens, b) || r.answered[b] {
		return nil
	}
	r.answered[b] = true
	if st == StatusOK {
		r.fenced[b] = true
		r.maxLAC = max(r.maxLAC, lac)
	}
	if FenceCovered(r.ens, r.md.WriteQuorum, r.md.AckQuorum, func(b BookieID) bool { return r.fenced[b] }) {
		r.phase = recReading
		r.start = max(r.maxLAC, r.fragFirst-1) + 1
		r.nextRead, r.decided = r.start, r.start
		r.reads, r.wb = map[int64]*readState{}, map[int64]*wbState{}
		r.wmd, r.failed, r.wlac = r.md.Clone(), map[BookieID]bool{}, r.start-1
		return r.issueReads(nil)
	}
	if len(r.answered) == len(r.ens) {
		return r.abort(nil, "fencing: %d of %d bookies fenced, some write set keeps %d unfenced (Qa)", len(r.fenced), len(r.ens), r.md.AckQuorum)
	}
	return nil
}

func (r *Recovery) issueReads(out []Effect) []Effect {
	for !r.endKnown && r.nextRead < r.decided+int64(r.opts.ReadAhead) {
		e := r.nextRead
		r.nextRead++
		rs := &readState{ws: r.md.WriteSetOf(e)}
		r.reads[e] = rs
		for _, b := range rs.ws {
			out = append(out, ReadEntry{Bookie: b, Entry: e, Fence: true})
		}
	}
	return out
}

// ReadResult reports a bookie's answer to a recovery read of entry e:
// StatusOK with the data, StatusNoSuchEntry (an explicit negative), or
// anything else (unknown: never counted as a negative).
func (r *Recovery) ReadResult(b BookieID, e int64, st Status, data []byte) []Effect {
	if r.phase != recReading {
		return nil
	}
	rs := r.reads[e]
	if rs == nil || !slices.Contains(rs.ws, b) || slices.Contains(rs.answered, b) {
		return nil
	}
	rs.answered = append(rs.answered, b)
	switch st {
	case StatusOK:
		if rs.have && !bytes.Equal(rs.data, data) {
			return r.abort(nil, "entry %d: bookies hold different values", e)
		}
		rs.have, rs.data = true, data
	case StatusNoSuchEntry:
		rs.neg++
	}
	return r.decide(nil)
}

// decide settles entries in order from the first undecided one.
func (r *Recovery) decide(out []Effect) []Effect {
	for !r.endKnown {
		e := r.decided
		rs := r.reads[e]
		if rs == nil {
			break
		}
		switch {
		case rs.have:
			delete(r.reads, e)
			r.decided++
			w := &wbState{data: rs.data}
			r.wb[e] = w
			out = r.writeBack(out, e, w)
		case rs.neg >= NegativeQuorum(r.md.WriteQuorum, r.md.AckQuorum):
			r.endKnown = true
			clear(r.reads)
		case len(rs.answered) == len(rs.ws):
			return r.abort(out, "entry %d: not found, and only %d of %d bookies deny it (need %d explicit negatives)", e, rs.neg, len(rs.ws), NegativeQuorum(r.md.WriteQuorum, r.md.AckQuorum))
		default:
			return r.issueReads(out)
		}
	}
	out = r.issueReads(out)
	return r.maybeClose(out)
}

// writeBack sends entry e to the bookies of its write set (in wmd) that
// neither hold it nor were sent it.
func (r *Recovery) writeBack(out []Effect, e int64, w *wbState) []Effect {
	for _, b := range r.wmd.WriteSetOf(e) {
		if slices.Contains(w.sent, b) || slices.Contains(w.acks, b) || slices.Contains(w.fails, b) {
			continue
		}
		w.sent = append(w.sent, b)
		// LAC start−1 is known committed (a fenced bookie's LAC or the
		// writer's LAC when it began the last fragment).
		out = append(out, SendAdd{Bookie: b, Entry: e, LAC: r.start - 1, Data: w.data, Recovery: true})
	}
	return out
}

// AddResult reports a bookie's answer to a recovery add (write-back): OK
// counts towards the entry's Qa; anything else replaces the bookie (see
// step 4 of Recovery). Answers from bookies no longer in the entry's
// write set are ignored.
func (r *Recovery) AddResult(b BookieID, e int64, st Status) []Effect {
	if r.phase != recReading {
		return nil
	}
	w := r.wb[e]
	if w == nil || r.failed[b] || !r.wmd.InWriteSet(e, b) || slices.Contains(w.acks, b) || slices.Contains(w.fails, b) {
		return nil
	}
	if st != StatusOK {
		if effs, ok := r.replace(b); ok {
			return effs
		}
		// No replacement: the entry may still reach Qa on the rest of its
		// write set (Qw − Qa failures are allowed).
		w.fails = append(w.fails, b)
		if len(w.fails) > r.md.WriteQuorum-r.md.AckQuorum {
			return r.abort(nil, "write-back of entry %d: %d of %d bookies failed, Qa=%d unreachable and no bookie available to replace them", e, len(w.fails), r.md.WriteQuorum, r.md.AckQuorum)
		}
		return nil
	}
	w.acks = append(w.acks, b)
	for {
		next := r.wb[r.wlac+1]
		if next == nil || len(next.acks) < r.md.AckQuorum {
			break
		}
		delete(r.wb, r.wlac+1)
		r.wlac++
	}
	return r.maybeClose(nil)
}

// replace replaces bookie b, which failed a write-back, in a new last
// fragment of wmd from wlac+1 (the last fragment is rewritten when it
// starts there) and sends the unsettled entries to their new write sets;
// false when no bookie is available to replace it. Every unsettled entry
// is > wlac, so b is in the last fragment.
func (r *Recovery) replace(b BookieID) ([]Effect, bool) {
	last := r.wmd.Fragments[len(r.wmd.Fragments)-1]
	i := slices.Index(last.Bookies, b)
	rep := pickReplacement(r.available, last.Bookies, r.failed, 0)
	if i < 0 || rep == "" {
		return nil, false
	}
	r.failed[b] = true
	ens := slices.Clone(last.Bookies)
	ens[i] = rep
	r.wmd.setLastFragment(r.wlac+1, ens)
	var out []Effect
	for e := r.wlac + 1; e < r.decided; e++ {
		w := r.wb[e]
		ws := r.wmd.WriteSetOf(e)
		w.acks, w.sent, w.fails = keep(w.acks, ws), keep(w.sent, ws), keep(w.fails, ws)
		out = r.writeBack(out, e, w)
	}
	return out, true
}

func (r *Recovery) maybeClose(out []Effect) []Effect {
	if r.phase != recReading || !r.endKnown || len(r.wb) > 0 {
		return out
	}
	r.phase = recClosing
	nm := r.wmd.Clone()
	nm.State, nm.LastEntry = StateClosed, r.decided-1
	return append(out, CASMetadata{Expected: r.md.Version, New: nm})
}
