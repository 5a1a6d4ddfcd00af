package ledger

// ReadOrder returns the bookies to read entry e from, in the order to try
// them: e's write set in the fragment that holds it (from index e mod E),
// with the bookies for which avoid returns true (known slow or failed)
// moved to the end. avoid may be nil.
func ReadOrder(md *Metadata, e int64, avoid func(BookieID) bool) []BookieID {
	ws := md.WriteSetOf(e)
	if avoid == nil {
		return ws
	}
	out := make([]BookieID, 0, len(ws))
	for _, b := range ws {
		if !avoid(b) {
			out = append(out, b)
		}
	}
	for _, b := range ws {
		if avoid(b) {
			out = append(out, b)
		}
	}
	return out
}

// Readable returns the last entry a non-fencing reader may read: the last
// entry of a CLOSED ledger, else lac, the highest LAC the reader learnt
// (entries past the LAC may still be lost by a recovery).
func Readable(md *Metadata, lac int64) int64 {
	if md.State == StateClosed {
		return md.LastEntry
	}
	return lac
}

// Reader is the pure state machine of a non-fencing reader: it reads
// entries in order from a first entry up to the LAC (open ledger) or the
// last entry (closed), trying each entry's write set in ReadOrder, and
// tails an open ledger by polling the LAC of the last fragment's bookies
// on Tick. Effects: ReadLAC (never fencing), ReadEntry (never fencing),
// Deliver (in entry order).
type Reader struct {
	md     Metadata
	next   int64 // next entry to deliver
	issued int64 // entries < issued have a read in flight or done
	lac    int64
	window int
	tries  map[int64]*readTry
	ready  map[int64][]byte
}

type readTry struct {
	order []BookieID
	i     int  // bookie of order being asked
	stuck bool // every bookie failed; retried on Tick
}

// NewReader returns a reader of md from entry from on, with at most window
// entries read ahead (default 16). lac is the LAC the caller knows (−1 if
// none); for a closed ledger it is ignored.
func NewReader(md Metadata, from, lac int64, window int) (*Reader, []Effect) {
	if window <= 0 {
		window = 16
	}
	r := &Reader{md: md.Clone(), next: from, issued: from, lac: lac, window: window,
		tries: map[int64]*readTry{}, ready: map[int64][]byte{}}
	return r, r.issue(nil)
}

// Next returns the next entry the reader will deliver.
func (r *Reader) Next() int64 { return r.next }

// Done reports whether a closed ledger has been read to its end.
func (r *Reader) Done() bool { return r.md.State == StateClosed && r.next > r.md.LastEntry }

// SetMetadata gives the reader newer metadata (the driver watches the
// ledger's key): a close ends tailing at the last entry.
func (r *Reader) SetMetadata(md Metadata) []Effect {
	r.md = md.Clone()
	return r.issue(nil)
}

func (r *Reader) issue(out []Effect) []Effect {
	last := Readable(&r.md, r.lac)
	for r.issued <= last && r.issued < r.next+int64(r.window) {
		e := r.issued
		r.issued++
		t := &readTry{order: ReadOrder(&r.md, e, nil)}
		r.tries[e] = t
		out = append(out, ReadEntry{Bookie: t.order[0], Entry: e})
	}
	return out
}

// Tick polls the LAC of an open ledger's last fragment once every entry up
// to the LAC has been asked for, and retries entries every bookie failed to return.
func (r *Reader) Tick() []Effect {
	var out []Effect
	for e := r.next; e < r.issued; e++ {
		if t := r.tries[e]; t != nil && t.stuck {
			t.stuck, t.i = false, 0
			out = append(out, ReadEntry{Bookie: t.order[0], Entry: e})
		}
	}
	if r.md.State != StateClosed && r.issued > r.lac {
		for _, b := range r.md.Fragments[len(r.md.Fragments)-1].Bookies {
			out = append(out, ReadLAC{Bookie: b})
		}
	}
	return out
}

// LACResult reports a bookie's answer to a ReadLAC: the reader's LAC is
// the highest seen.
func (r *Reader) LACResult(b BookieID, st Status, lac int64) []Effect {
	if st != StatusOK || lac <= r.lac {
		return nil
	}
	r.lac = lac
	return r.issue(nil)
}

// ReadResult reports a bookie's answer to a ReadEntry. On anything but OK
// the next bookie of the entry's read order is asked; when all failed the
// entry waits for the next Tick.
func (r *Reader) ReadResult(b BookieID, e int64, st Status, data []byte) []Effect {
	t := r.tries[e]
	if t == nil || t.stuck || t.order[t.i] != b {
		return nil
	}
	if st != StatusOK {
		t.i++
		if t.i == len(t.order) {
			t.stuck = true
			return nil
		}
		return []Effect{ReadEntry{Bookie: t.order[t.i], Entry: e}}
	}
	delete(r.tries, e)
	r.ready[e] = data
	var out []Effect
	for {
		d, ok := r.ready[r.next]
		if !ok {
			break
		}
		delete(r.ready, r.next)
		out = append(out, Deliver{Entry: r.next, Data: d})
		r.next++
	}
	return r.issue(out)
}
