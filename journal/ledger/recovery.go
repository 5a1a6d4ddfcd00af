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
//     its write set hold it.
//  5. CAS CLOSED with the last recovered entry as last entry.
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
	wb       map[int64]*wbState // write-backs not yet on Qa bookies
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
	ws    []BookieID
	acks  []BookieID
	fails []BookieID
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
	r := &Recovery{md: md.Clone(), opts: opts, maxLAC: -1}
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
			w := &wbState{ws: rs.ws}
			r.wb[e] = w
			for _, b := range rs.ws {
				// LAC start−1 is known committed (a fenced bookie's LAC or the
				// writer's LAC when it began the last fragment).
				out = append(out, SendAdd{Bookie: b, Entry: e, LAC: r.start - 1, Data: rs.data, Recovery: true})
			}
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

// AddResult reports a bookie's answer to a recovery add (write-back).
func (r *Recovery) AddResult(b BookieID, e int64, st Status) []Effect {
	if r.phase != recReading {
		return nil
	}
	w := r.wb[e]
	if w == nil || !slices.Contains(w.ws, b) || slices.Contains(w.acks, b) || slices.Contains(w.fails, b) {
		return nil
	}
	if st != StatusOK {
		w.fails = append(w.fails, b)
		if len(w.fails) > r.md.WriteQuorum-r.md.AckQuorum {
			return r.abort(nil, "write-back of entry %d: %d of %d bookies failed, Qa=%d unreachable", e, len(w.fails), len(w.ws), r.md.AckQuorum)
		}
		return nil
	}
	w.acks = append(w.acks, b)
	if len(w.acks) >= r.md.AckQuorum {
		delete(r.wb, e)
	}
	return r.maybeClose(nil)
}

func (r *Recovery) maybeClose(out []Effect) []Effect {
	if r.phase != recReading || !r.endKnown || len(r.wb) > 0 {
		return out
	}
	r.phase = recClosing
	nm := r.md.Clone()
	nm.State, nm.LastEntry = StateClosed, r.decided-1
	return append(out, CASMetadata{Expected: r.md.Version, New: nm})
}
