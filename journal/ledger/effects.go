package ledger

import (
	"fmt"
	"strings"
)

// Effect is one thing a state machine asks its driver to do. The driver
// executes the effects of a batch in order (sends may run concurrently;
// their answers come back as inputs). Concrete types: SendAdd, WriteLAC,
// ReadLAC, ReadEntry, CASMetadata, Acked, FailAdds, Closed, Stopped,
// Recovered, Aborted, Deliver.
type Effect interface {
	fmt.Stringer
	effect()
}

// SendAdd: send entry Entry with Data to Bookie, piggybacking LAC. Recovery
// marks a recovery add (accepted by a fenced bookie). The answer comes back
// as Writer.AddResult or Recovery.AddResult.
type SendAdd struct {
	Bookie   BookieID
	Entry    int64
	LAC      int64
	Data     []byte
	Recovery bool
}

// WriteLAC: send an explicit LAC to Bookie (an idle writer's). Best effort:
// its answer is not reported.
type WriteLAC struct {
	Bookie BookieID
	LAC    int64
}

// ReadLAC: read Bookie's LAC; with Fence, fence the ledger first (recovery).
// The answer comes back as Recovery.LACResult or Reader.LACResult.
type ReadLAC struct {
	Bookie BookieID
	Fence  bool
}

// ReadEntry: read Entry from Bookie; with Fence, fence the ledger first
// (recovery reads fence). The answer comes back as Recovery.ReadResult or
// Reader.ReadResult.
type ReadEntry struct {
	Bookie BookieID
	Entry  int64
	Fence  bool
}

// CASMetadata: write New to meta if the stored version is still Expected
// (meta/schema.Store.CASLedger). The outcome comes back as CASDone: the new
// version on success, the metadata now stored on a mismatch.
type CASMetadata struct {
	Expected uint64
	New      Metadata
}

// Acked: entries From..UpTo are durable (acknowledged to the writer's
// caller). UpTo is the new LAC.
type Acked struct{ From, UpTo int64 }

// FailAdds: entries From..To failed with Err. The outcome of each is
// unknown (it may or may not survive a recovery), so callers must treat
// them as ambiguous, like a timeout.
type FailAdds struct {
	From, To int64
	Err      error
}

// Closed: the writer closed the ledger with LastEntry (its LAC).
type Closed struct{ LastEntry int64 }

// Stopped: the writer stopped for good with Err (ErrFenced when the ledger
// is being recovered or was closed by someone else).
type Stopped struct{ Err error }

// Recovered: recovery closed the ledger (or found it closed) with
// LastEntry. Every entry up to LastEntry is on at least Qa bookies.
type Recovered struct{ LastEntry int64 }

// Aborted: recovery gave up without closing, for Reason. Nothing it did
// is unsafe; the driver may start a new recovery later.
type Aborted struct{ Reason string }

// Deliver: the reader read Entry (in order, at most up to the LAC).
type Deliver struct {
	Entry int64
	Data  []byte
}

func (SendAdd) effect()     {}
func (WriteLAC) effect()    {}
func (ReadLAC) effect()     {}
func (ReadEntry) effect()   {}
func (CASMetadata) effect() {}
func (Acked) effect()       {}
func (FailAdds) effect()    {}
func (Closed) effect()      {}
func (Stopped) effect()     {}
func (Recovered) effect()   {}
func (Aborted) effect()     {}
func (Deliver) effect()     {}

func (e SendAdd) String() string {
	s := fmt.Sprintf("add %s e=%d lac=%d data=%s", e.Bookie, e.Entry, e.LAC, e.Data)
	if e.Recovery {
		s += " recovery"
	}
	return s
}
func (e WriteLAC) String() string { return fmt.Sprintf("write-lac %s lac=%d", e.Bookie, e.LAC) }
func (e ReadLAC) String() string {
	if e.Fence {
		return fmt.Sprintf("read-lac %s fence", e.Bookie)
	}
	return fmt.Sprintf("read-lac %s", e.Bookie)
}
func (e ReadEntry) String() string {
	s := fmt.Sprintf("read %s e=%d", e.Bookie, e.Entry)
	if e.Fence {
		s += " fence"
	}
	return s
}
func (e CASMetadata) String() string {
	return fmt.Sprintf("cas expect=%d -> %s", e.Expected, strings.TrimPrefix(e.New.String(), fmt.Sprintf("v=%d ", e.New.Version)))
}
func (e Acked) String() string     { return fmt.Sprintf("acked %d..%d", e.From, e.UpTo) }
func (e FailAdds) String() string  { return fmt.Sprintf("fail-adds %d..%d: %v", e.From, e.To, e.Err) }
func (e Closed) String() string    { return fmt.Sprintf("closed last=%d", e.LastEntry) }
func (e Stopped) String() string   { return fmt.Sprintf("stopped: %v", e.Err) }
func (e Recovered) String() string { return fmt.Sprintf("recovered last=%d", e.LastEntry) }
func (e Aborted) String() string   { return fmt.Sprintf("aborted: %s", e.Reason) }
func (e Deliver) String() string   { return fmt.Sprintf("deliver e=%d data=%s", e.Entry, e.Data) }

// CASResult is the outcome of a CASMetadata effect. On success Version is
// the new version; on a version mismatch OK is false and Current is the
// metadata now stored (read back by the driver).
type CASResult struct {
	OK      bool
	Version uint64
	Current Metadata
}
