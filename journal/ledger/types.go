package ledger

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// BookieID names a bookie (its address or node id, as in the ledger's
// metadata fragments).
type BookieID = string

// State is a ledger's state. The values are those of meta/schema's
// LedgerState, so a driver converts with a plain string conversion.
type State string

// Ledger states.
const (
	StateOpen       State = "OPEN"
	StateInRecovery State = "IN_RECOVERY"
	StateClosed     State = "CLOSED"
)

// Fragment is the ensemble of a ledger from FirstEntry on, until the next
// fragment's FirstEntry (meta/schema.Fragment).
type Fragment struct {
	FirstEntry int64
	Bookies    []BookieID
}

// Metadata is a ledger's metadata as stored in meta (meta/schema.Ledger)
// together with the version a CAS must name. The state machines never
// modify a Metadata they were given; they copy before changing it.
type Metadata struct {
	ID          uint64
	Ensemble    int // E
	WriteQuorum int // Qw
	AckQuorum   int // Qa
	State       State
	LastEntry   int64 // last entry of a CLOSED ledger; -1: empty
	Fragments   []Fragment
	Version     uint64 // meta version; CAS effects name it as the expected version
}

// Validate checks E ≥ Qw ≥ Qa ≥ 1, a known state and fragments in strictly
// ascending order of first entry, each of E distinct bookies (the same rules
// as meta/schema.Ledger.Validate).
func (m *Metadata) Validate() error {
	if !(m.Ensemble >= m.WriteQuorum && m.WriteQuorum >= m.AckQuorum && m.AckQuorum >= 1) {
		return fmt.Errorf("%w: need E >= Qw >= Qa >= 1, have %d/%d/%d", ErrInvalid, m.Ensemble, m.WriteQuorum, m.AckQuorum)
	}
	switch m.State {
	case StateOpen, StateInRecovery, StateClosed:
	default:
		return fmt.Errorf("%w: state %q", ErrInvalid, m.State)
	}
	if len(m.Fragments) == 0 {
		return fmt.Errorf("%w: no fragment", ErrInvalid)
	}
	for i, f := range m.Fragments {
		if i == 0 && f.FirstEntry != 0 {
			return fmt.Errorf("%w: first fragment starts at %d", ErrInvalid, f.FirstEntry)
		}
		if i > 0 && f.FirstEntry <= m.Fragments[i-1].FirstEntry {
			return fmt.Errorf("%w: fragments out of order", ErrInvalid)
		}
		if len(f.Bookies) != m.Ensemble || hasDuplicate(f.Bookies) {
			return fmt.Errorf("%w: fragment %d needs %d distinct bookies", ErrInvalid, i, m.Ensemble)
		}
	}
	return nil
}

// Clone returns a deep copy of m.
func (m Metadata) Clone() Metadata {
	fs := make([]Fragment, len(m.Fragments))
	for i, f := range m.Fragments {
		fs[i] = Fragment{FirstEntry: f.FirstEntry, Bookies: append([]BookieID(nil), f.Bookies...)}
	}
	m.Fragments = fs
	return m
}

// FragmentOf returns the index of the fragment that holds entry e: the last
// fragment whose FirstEntry ≤ e.
func (m *Metadata) FragmentOf(e int64) int {
	i := 0
	for j, f := range m.Fragments {
		if f.FirstEntry <= e {
			i = j
		}
	}
	return i
}

// WriteSetOf returns the write set of entry e in the fragment that holds it.
func (m *Metadata) WriteSetOf(e int64) []BookieID {
	return WriteSet(m.Fragments[m.FragmentOf(e)].Bookies, m.WriteQuorum, e)
}

// InWriteSet reports whether b is in the write set of entry e
// (WriteSetOf without allocating: the writer asks it for every answer).
func (m *Metadata) InWriteSet(e int64, b BookieID) bool {
	ens := m.Fragments[m.FragmentOf(e)].Bookies
	for j := range m.WriteQuorum {
		if writeSetMember(ens, e, j) == b {
			return true
		}
	}
	return false
}

// setLastFragment makes ens the ensemble of the entries from first on (an
// ensemble change): the last fragment is rewritten when it starts at first
// (it holds no entry yet), else a fragment from first is appended.
func (m *Metadata) setLastFragment(first int64, ens []BookieID) {
	if last := &m.Fragments[len(m.Fragments)-1]; last.FirstEntry == first {
		last.Bookies = ens
	} else {
		m.Fragments = append(m.Fragments, Fragment{FirstEntry: first, Bookies: ens})
	}
}

// pickReplacement returns a bookie to replace a failed one of ensemble
// ens: the first of available (in order of preference) that is not in ens
// and never failed — or, with skip > 0, the next after skipping skip such
// bookies (CanReplace asks for one beyond those its failed bookies take).
// "" when there is none.
func pickReplacement(available, ens []BookieID, failed map[BookieID]bool, skip int) BookieID {
	for _, c := range available {
		if !slices.Contains(ens, c) && !failed[c] {
			if skip == 0 {
				return c
			}
			skip--
		}
	}
	return ""
}

// String formats m as the scenario scripts print it.
func (m Metadata) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "v=%d state=%s", m.Version, m.State)
	if m.State == StateClosed {
		fmt.Fprintf(&b, " last=%d", m.LastEntry)
	}
	b.WriteString(" frags=")
	for i, f := range m.Fragments {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d:%s", f.FirstEntry, strings.Join(f.Bookies, ","))
	}
	return b.String()
}

// WriteSet returns the Qw bookies entry e is written to: the bookies of
// ensemble from index e mod E on, wrapping around (DESIGN.md, "Journal",
// striping). They are distinct whenever the ensemble's bookies are.
func WriteSet(ensemble []BookieID, qw int, e int64) []BookieID {
	ws := make([]BookieID, qw)
	for j := range qw {
		ws[j] = writeSetMember(ensemble, e, j)
	}
	return ws
}

// writeSetMember is WriteSet(ensemble, qw, e)[j] without allocating.
func writeSetMember(ensemble []BookieID, e int64, j int) BookieID {
	n := len(ensemble)
	return ensemble[(int(e%int64(n))+j)%n]
}

// NegativeQuorum is the number of explicit NoSuchEntry answers from an
// entry's write set that prove the entry was never acknowledged: (Qw−Qa)+1.
// An acknowledged entry is stored (synced) on at least Qa of its Qw
// bookies, so at most Qw−Qa of them can truthfully deny it.
func NegativeQuorum(qw, qa int) int { return qw - qa + 1 }

// FenceCovered reports whether fencing has reached enough of ensemble that
// no write can be acknowledged any more: in every write set of the
// ensemble (the E sets of Qw consecutive bookies from each index), fewer
// than Qa bookies are not known to be fenced. A writer needs Qa acks from
// one write set, and a fenced bookie refuses its adds, so it can no longer
// complete any add. This is the "quorum coverage" of the TLA+ spec
// (Vanlightly/bookkeeper-tlaplus, QuorumCoverage.tla, non-affirmative form,
// with the cohort taken per write set as BookKeeper's
// RoundRobinDistributionSchedule does); for E = Qw it is the spec's
// "(E−Qa)+1 bookies fenced".
func FenceCovered(ensemble []BookieID, qw, qa int, fenced func(BookieID) bool) bool {
	for i := range ensemble {
		unfenced := 0
		for _, b := range WriteSet(ensemble, qw, int64(i)) {
			if !fenced(b) {
				unfenced++
			}
		}
		if unfenced >= qa {
			return false
		}
	}
	return true
}

func hasDuplicate(bs []BookieID) bool {
	seen := make(map[BookieID]bool, len(bs))
	for _, b := range bs {
		if seen[b] {
			return true
		}
		seen[b] = true
	}
	return false
}

// Status is a bookie's answer to one request, as the state machines need
// it. A driver maps bookierpc statuses: OK → StatusOK; NO_SUCH_ENTRY and
// NO_SUCH_LEDGER → StatusNoSuchEntry; FENCED → StatusFenced; anything else
// (a gRPC error, a deadline, FAILED, CLOSED, CORRUPT, ERROR, BAD_CRC,
// TOO_LARGE) → StatusUnknown.
type Status uint8

// Statuses.
const (
	// StatusOK: the bookie did it (add synced, entry returned, fenced).
	StatusOK Status = iota
	// StatusNoSuchEntry is an explicit negative: the bookie answered that it
	// does not hold the entry (or the ledger).
	StatusNoSuchEntry
	// StatusFenced: the bookie refused a non-recovery add because the ledger
	// is fenced. It says nothing about whether the add is stored elsewhere.
	StatusFenced
	// StatusUnknown: no answer (timeout, broken connection) or an error. It
	// is never a negative: the data may or may not be there.
	StatusUnknown
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusNoSuchEntry:
		return "no-such-entry"
	case StatusFenced:
		return "fenced"
	case StatusUnknown:
		return "unknown"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Errors carried by effects and returned by inputs.
var (
	// ErrInvalid is returned when metadata or options break the rules.
	ErrInvalid = errors.New("ledger: invalid")
	// ErrFenced is the reason of FailAdds and Stopped when the ledger was
	// fenced or left OPEN (someone else is recovering or closed it). Adds
	// failed with it are ambiguous: they may or may not survive recovery.
	ErrFenced = errors.New("ledger: fenced (ledger is being recovered or was closed by another client)")
	// ErrClosed is returned by Writer.Add after Close or once the writer
	// stopped.
	ErrClosed = errors.New("ledger: writer closed")
	// ErrStopped is the reason of FailAdds when the driver stopped the
	// writer (Writer.Stop) with no cause of its own.
	ErrStopped = errors.New("ledger: writer stopped")
)
