package ledger

import (
	"fmt"
	"slices"
)

// Writer is the pure state machine of a ledger's single writer: striping,
// ack quorums, LAC, explicit LAC when idle, ensemble changes and close.
// Every input method returns the effects it asks for, in order; nothing
// happens between calls. A Writer is not safe for concurrent use: the
// driver feeds it from one goroutine.
type Writer struct {
	md        Metadata  // committed metadata
	proposed  *Metadata // metadata being CASed (ensemble change or close), nil if none
	closing   bool      // the CAS in flight is the close
	available []BookieID
	failed    map[BookieID]bool // bookies that failed (never chosen as replacements)

	next    int64   // next entry id
	lac     int64   // last add confirmed: highest contiguous acknowledged entry
	pending []*pend // entries lac+1 .. next-1, in order
	free    []*pend // acknowledged pends, reused by Add (at most maxFreePends)

	phase         writerPhase
	lacSent       int64 // highest LAC sent to bookies (piggybacked or explicit)
	sentSinceTick bool
}

type writerPhase uint8

const (
	phaseWriting writerPhase = iota
	phaseClosing             // Close called: no more adds; close once pending settle
	phaseClosed
	phaseStopped
)

func (p writerPhase) String() string {
	return [...]string{"writing", "closing", "closed", "stopped"}[p]
}

// maxFreePends bounds the acknowledged pends a Writer keeps for reuse: a
// pend per entry was a fifth of the client's allocation per add.
const maxFreePends = 1024

// pend is an add not yet acknowledged to the caller.
type pend struct {
	entry int64
	data  []byte
	acks  []BookieID // distinct bookies of the entry's current write set that acked
	sent  []BookieID // bookies of the current write set the add was sent to
	// Backing arrays of acks and sent for the usual Qw ≤ 3: one
	// allocation per entry instead of three.
	acksBuf, sentBuf [3]BookieID
}

// NewWriter returns the writer of a ledger this client just created: md is
// its metadata (OPEN, one fragment from entry 0), available the bookies
// that may replace a failed one, in order of preference (the driver
// updates it with SetAvailable). The first entry is 0 and the LAC −1.
func NewWriter(md Metadata, available []BookieID) (*Writer, error) {
	if err := md.Validate(); err != nil {
		return nil, err
	}
	if md.State != StateOpen {
		return nil, fmt.Errorf("%w: writer needs an OPEN ledger, have %s", ErrInvalid, md.State)
	}
	return &Writer{
		md:        md.Clone(),
		available: append([]BookieID(nil), available...),
		failed:    map[BookieID]bool{},
		lac:       -1,
		lacSent:   -1,
	}, nil
}

// LAC returns the last add confirmed.
func (w *Writer) LAC() int64 { return w.lac }

// Next returns the entry id the next Add gets.
func (w *Writer) Next() int64 { return w.next }

// Metadata returns (a copy of) the committed metadata the writer holds.
func (w *Writer) Metadata() Metadata { return w.md.Clone() }

// String summarizes the writer's state (for scenario scripts and logs).
func (w *Writer) String() string {
	s := fmt.Sprintf("phase=%s next=%d lac=%d pending=%d md=[%s]", w.phase, w.next, w.lac, len(w.pending), w.md)
	if w.proposed != nil {
		s += " cas-in-flight"
	}
	return s
}

// ensemble is the ensemble adds are counted against: the proposed last
// fragment while an ensemble change is in flight, else the committed one.
func (w *Writer) cur() *Metadata {
	if w.proposed != nil && !w.closing {
		return w.proposed
	}
	return &w.md
}

func (w *Writer) ensemble() []BookieID {
	m := w.cur()
	return m.Fragments[len(m.Fragments)-1].Bookies
}

// canSend: no metadata change in flight and no failed bookie waiting for a
// replacement in the ensemble.
func (w *Writer) canSend() bool {
	if w.proposed != nil {
		return false
	}
	for _, b := range w.ensemble() {
		if w.failed[b] {
			return false
		}
	}
	return true
}

func (w *Writer) find(e int64) *pend {
	if e <= w.lac || e >= w.next {
		return nil
	}
	return w.pending[e-w.lac-1]
}

// Add appends data as the next entry. It returns the entry id and the
// sends to its write set (none while an ensemble change is in flight: the
// add goes out once it commits). ErrClosed after Close or once stopped.
func (w *Writer) Add(data []byte) (int64, []Effect, error) {
	if w.phase != phaseWriting {
		return -1, nil, ErrClosed
	}
	var p *pend
	if n := len(w.free); n > 0 {
		p, w.free = w.free[n-1], w.free[:n-1]
		*p = pend{entry: w.next, data: data}
	} else {
		p = &pend{entry: w.next, data: data}
	}
	p.acks, p.sent = p.acksBuf[:0], p.sentBuf[:0]
	w.next++
	w.pending = append(w.pending, p)
	var out []Effect
	if w.canSend() {
		out = w.send(out, p)
	}
	return p.entry, out, nil
}

// send sends p to every bookie of its write set it was not sent to yet.
func (w *Writer) send(out []Effect, p *pend) []Effect {
	m := w.cur()
	ens := m.Fragments[m.FragmentOf(p.entry)].Bookies
	for j := range m.WriteQuorum {
		b := writeSetMember(ens, p.entry, j)
		if slices.Contains(p.sent, b) || slices.Contains(p.acks, b) {
			continue
		}
		p.sent = append(p.sent, b)
		out = append(out, SendAdd{Bookie: b, Entry: p.entry, LAC: w.lac, Data: p.data})
		w.sentSinceTick = true
		w.lacSent = max(w.lacSent, w.lac)
	}
	return out
}

// AddResult reports a bookie's answer to a SendAdd of entry e. OK counts
// towards e's ack quorum if b is in e's write set; FENCED stops the writer
// (the ledger is being recovered: pending adds fail as ambiguous); any
// other answer (StatusUnknown: a timeout or error) fails bookie b and
// starts an ensemble change. Answers for settled entries, from bookies no
// longer in the entry's write set, or after the writer ended are ignored.
func (w *Writer) AddResult(b BookieID, e int64, st Status) []Effect {
	if w.phase >= phaseClosed {
		return nil
	}
	p := w.find(e)
	if p == nil || w.failed[b] || !w.cur().InWriteSet(e, b) {
		return nil
	}
	switch st {
	case StatusOK:
		if !slices.Contains(p.acks, b) {
			p.acks = append(p.acks, b)
		}
		return w.advance(nil)
	case StatusFenced:
		return w.stop(nil, ErrFenced)
	default:
		return w.BookieFailed(b)
	}
}

// BookieFailed reports that bookie b failed (an add to it timed out or
// errored, or its connection broke). If b is in the current ensemble, the
// writer replaces it: a new fragment from LAC+1 with a bookie from the
// available list that is not in the ensemble, CASed into the metadata.
func (w *Writer) BookieFailed(b BookieID) []Effect {
	if w.phase >= phaseClosed || w.failed[b] || !slices.Contains(w.ensemble(), b) {
		return nil
	}
	w.failed[b] = true
	if w.proposed != nil {
		return nil // the next change starts when this CAS completes
	}
	return w.startChange(nil)
}

// SetAvailable replaces the list of bookies that may replace failed ones.
// A writer stalled for want of a replacement retries its ensemble change.
func (w *Writer) SetAvailable(bookies []BookieID) []Effect {
	w.available = append([]BookieID(nil), bookies...)
	if w.phase >= phaseClosed || w.proposed != nil || w.canSend() {
		return nil
	}
	return w.startChange(nil)
}

// Stalled reports whether the writer waits for a replacement bookie the
// available list does not offer (startChange found none): it sends
// nothing until SetAvailable offers one, or the driver gives up (Stop).
func (w *Writer) Stalled() bool {
	return w.phase < phaseClosed && w.proposed == nil && !w.canSend()
}

// CanReplace reports whether an ensemble change could replace one more
// failed bookie now: the available list offers more bookies outside the
// ensemble (and never failed) than the ensemble has failed ones. A driver
// whose bookie stopped answering may wait for it to come back rather than
// fail it when it could not be replaced anyway.
func (w *Writer) CanReplace() bool {
	ens := w.ensemble()
	failed := 0
	for _, b := range ens {
		if w.failed[b] {
			failed++
		}
	}
	return pickReplacement(w.available, ens, w.failed, failed) != ""
}

// startChange proposes a new last fragment from LAC+1 in which every
// failed bookie of the ensemble is replaced. With no replacement available
// the writer stalls (sends nothing) until SetAvailable.
func (w *Writer) startChange(out []Effect) []Effect {
	old := w.md.Fragments[len(w.md.Fragments)-1].Bookies
	ens := append([]BookieID(nil), old...)
	for i, b := range ens {
		if !w.failed[b] {
			continue
		}
		r := pickReplacement(w.available, ens, w.failed, 0)
		if r == "" {
			return out // stalled
		}
		ens[i] = r
	}
	nm := w.md.Clone()
	nm.setLastFragment(w.lac+1, ens)
	w.proposed, w.closing = &nm, false
	w.restrict()
	return append(out, CASMetadata{Expected: w.md.Version, New: nm})
}

// restrict drops acks and sends of bookies no longer in each pending
// entry's write set (an entry is acknowledged only on Qa acks from its
// write set in the fragment that holds it).
func (w *Writer) restrict() {
	m := w.cur()
	for _, p := range w.pending {
		ws := m.WriteSetOf(p.entry)
		p.acks = keep(p.acks, ws)
		p.sent = keep(p.sent, ws)
	}
}

func keep(bs, in []BookieID) []BookieID {
	out := bs[:0]
	for _, b := range bs {
		if slices.Contains(in, b) {
			out = append(out, b)
		}
	}
	return out
}

// advance moves the LAC over every leading entry with Qa acks (never while
// a metadata CAS is in flight: the fragment holding those entries is not
// settled) and then closes if Close is waiting.
func (w *Writer) advance(out []Effect) []Effect {
	if w.proposed != nil {
		return out
	}
	from := w.lac + 1
	n := 0
	for n < len(w.pending) && len(w.pending[n].acks) >= w.md.AckQuorum {
		n++
	}
	if n > 0 {
		w.lac += int64(n)
		for _, p := range w.pending[:n] {
			if len(w.free) < maxFreePends {
				*p = pend{} // drop the data: the caller may reuse it
				w.free = append(w.free, p)
			}
		}
		clear(w.pending[:n])
		w.pending = w.pending[n:]
		out = append(out, Acked{From: from, UpTo: w.lac})
	}
	return w.maybeClose(out)
}

// CASDone reports the outcome of the writer's CASMetadata effect.
func (w *Writer) CASDone(r CASResult) []Effect {
	if w.proposed == nil || w.phase >= phaseClosed {
		return nil
	}
	prop, closing := w.proposed, w.closing
	w.proposed, w.closing = nil, false
	var out []Effect
	if !r.OK {
		if r.Current.State != StateOpen {
			return w.stop(out, ErrFenced)
		}
		// Someone else changed the metadata while it stayed OPEN: adopt it
		// and try again.
		w.md = r.Current.Clone()
		if closing {
			return w.maybeClose(out)
		}
		w.restrict()
		return w.resume(out)
	}
	w.md = prop.Clone()
	w.md.Version = r.Version
	if closing {
		w.phase = phaseClosed
		return append(out, Closed{LastEntry: w.md.LastEntry})
	}
	return w.resume(out)
}

// resume sends what is pending if it can, or starts the next ensemble
// change if a bookie of the ensemble is still failed.
func (w *Writer) resume(out []Effect) []Effect {
	if !w.canSend() {
		return w.startChange(out)
	}
	for _, p := range w.pending {
		out = w.send(out, p)
	}
	return w.advance(out)
}

// Close stops accepting adds and, once every pending add is acknowledged,
// CASes the metadata to CLOSED with the LAC as last entry (effect Closed
// on success). ErrClosed if Close was already called or the writer
// stopped.
func (w *Writer) Close() ([]Effect, error) {
	if w.phase != phaseWriting {
		return nil, ErrClosed
	}
	w.phase = phaseClosing
	return w.maybeClose(nil), nil
}

func (w *Writer) maybeClose(out []Effect) []Effect {
	if w.phase != phaseClosing || w.proposed != nil || len(w.pending) > 0 {
		return out
	}
	nm := w.md.Clone()
	nm.State, nm.LastEntry = StateClosed, w.lac
	w.proposed, w.closing = &nm, true
	return append(out, CASMetadata{Expected: w.md.Version, New: nm})
}

// Stop ends the writer (the driver gives up, e.g. no replacement bookie in
// time): pending adds fail with err (ErrStopped if nil).
func (w *Writer) Stop(err error) []Effect {
	if w.phase >= phaseClosed {
		return nil
	}
	if err == nil {
		err = ErrStopped
	}
	return w.stop(nil, err)
}

func (w *Writer) stop(out []Effect, err error) []Effect {
	w.phase = phaseStopped
	w.proposed, w.closing = nil, false
	if len(w.pending) > 0 {
		out = append(out, FailAdds{From: w.lac + 1, To: w.next - 1, Err: err})
		w.pending = nil
	}
	return append(out, Stopped{Err: err})
}

// Tick is the writer's clock. When a whole tick passed without an add
// being sent and the LAC moved past what bookies were last told, it sends
// the LAC explicitly to every bookie of the ensemble, so tailing readers
// are not one entry behind an idle writer.
func (w *Writer) Tick() []Effect {
	idle := !w.sentSinceTick
	w.sentSinceTick = false
	if !idle || w.phase >= phaseClosed || !w.canSend() || w.lac <= w.lacSent {
		return nil
	}
	var out []Effect
	for _, b := range w.ensemble() {
		out = append(out, WriteLAC{Bookie: b, LAC: w.lac})
	}
	w.lacSent = w.lac
	return out
}
