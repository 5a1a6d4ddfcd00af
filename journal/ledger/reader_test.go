package ledger

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func effStrings(effs []Effect) string {
	var s []string
	for _, e := range effs {
		s = append(s, e.String())
	}
	return strings.Join(s, "; ")
}

func TestReadOrder(t *testing.T) {
	md := Metadata{Ensemble: 3, WriteQuorum: 2, AckQuorum: 2, State: StateClosed, LastEntry: 5,
		Fragments: []Fragment{{0, []BookieID{"b1", "b2", "b3"}}, {3, []BookieID{"b1", "b4", "b3"}}}}
	for _, c := range []struct {
		e    int64
		want []BookieID
	}{{0, []BookieID{"b1", "b2"}}, {2, []BookieID{"b3", "b1"}}, {3, []BookieID{"b1", "b4"}}, {4, []BookieID{"b4", "b3"}}} {
		if got := ReadOrder(&md, c.e, nil); !slices.Equal(got, c.want) {
			t.Errorf("ReadOrder(%d) = %v, want %v", c.e, got, c.want)
		}
	}
	if got := ReadOrder(&md, 4, func(b BookieID) bool { return b == "b4" }); !slices.Equal(got, []BookieID{"b3", "b4"}) {
		t.Errorf("ReadOrder avoiding b4 = %v", got)
	}
}

// TestReaderClosed reads a closed ledger across an ensemble change, with a
// bookie that lacks an entry (fallback) and one that times out (retry on
// Tick), and delivers in order up to the last entry only.
func TestReaderClosed(t *testing.T) {
	md := Metadata{Ensemble: 3, WriteQuorum: 2, AckQuorum: 2, State: StateClosed, LastEntry: 4,
		Fragments: []Fragment{{0, []BookieID{"b1", "b2", "b3"}}, {3, []BookieID{"b1", "b4", "b3"}}}}
	r, effs := NewReader(md, 0, -1, 3)
	if got, want := effStrings(effs), "read b1 e=0; read b2 e=1; read b3 e=2"; got != want {
		t.Fatalf("start: %s, want %s", got, want)
	}
	if got := effStrings(r.ReadResult("b2", 1, StatusOK, []byte("x1"))); got != "" {
		t.Fatalf("out of order delivery: %s", got)
	}
	if got, want := effStrings(r.ReadResult("b1", 0, StatusNoSuchEntry, nil)), "read b2 e=0"; got != want {
		t.Fatalf("fallback: %s, want %s", got, want)
	}
	if got, want := effStrings(r.ReadResult("b2", 0, StatusOK, []byte("x0"))), "deliver e=0 data=x0; deliver e=1 data=x1; read b1 e=3; read b4 e=4"; got != want {
		t.Fatalf("in order: %s, want %s", got, want)
	}
	r.ReadResult("b3", 2, StatusUnknown, nil)
	r.ReadResult("b1", 2, StatusUnknown, nil)
	if got, want := effStrings(r.Tick()), "read b3 e=2"; got != want {
		t.Fatalf("retry: %s, want %s", got, want)
	}
	r.ReadResult("b4", 4, StatusOK, []byte("x4"))
	r.ReadResult("b1", 3, StatusOK, []byte("x3"))
	if got, want := effStrings(r.ReadResult("b3", 2, StatusOK, []byte("x2"))), "deliver e=2 data=x2; deliver e=3 data=x3; deliver e=4 data=x4"; got != want {
		t.Fatalf("end: %s, want %s", got, want)
	}
	if !r.Done() {
		t.Fatal("not done")
	}
}

// TestReaderTailing tails an open ledger: nothing past the LAC is read;
// Tick polls the LAC (without fencing) once every entry up to it is asked for; a close ends it.
func TestReaderTailing(t *testing.T) {
	md := Metadata{Ensemble: 2, WriteQuorum: 2, AckQuorum: 2, State: StateOpen, LastEntry: -1,
		Fragments: []Fragment{{0, []BookieID{"b1", "b2"}}}}
	r, effs := NewReader(md, 0, 0, 4)
	if got, want := effStrings(effs), "read b1 e=0"; got != want {
		t.Fatalf("start: %s, want %s", got, want)
	}
	r.ReadResult("b1", 0, StatusOK, []byte("x0"))
	if got, want := effStrings(r.Tick()), "read-lac b1; read-lac b2"; got != want {
		t.Fatalf("poll: %s, want %s", got, want)
	}
	if got := effStrings(r.LACResult("b1", StatusUnknown, 9)); got != "" {
		t.Fatalf("unknown LAC used: %s", got)
	}
	if got, want := effStrings(r.LACResult("b2", StatusOK, 2)), "read b2 e=1; read b1 e=2"; got != want {
		t.Fatalf("after LAC 2: %s, want %s", got, want)
	}
	// Every entry up to the LAC is asked for: the next poll goes out.
	if got, want := effStrings(r.Tick()), "read-lac b1; read-lac b2"; got != want {
		t.Fatalf("poll: %s, want %s", got, want)
	}
	md.State, md.LastEntry = StateClosed, 3
	if got, want := effStrings(r.SetMetadata(md)), "read b2 e=3"; got != want {
		t.Fatalf("after close: %s, want %s", got, want)
	}
	for e := int64(1); e <= 3; e++ {
		r.ReadResult(ReadOrder(&md, e, nil)[0], e, StatusOK, []byte(fmt.Sprint("x", e)))
	}
	if !r.Done() || len(r.Tick()) != 0 {
		t.Fatal("closed ledger read to its end should be done and quiet")
	}
}
