package meta

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quiremq/quire/internal/vfs"
)

func mkLog(i uint64) *raft.Log {
	return &raft.Log{Index: i, Term: i/10 + 1, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry-%d", i)),
		Extensions: []byte{byte(i)}, AppendedAt: time.Unix(0, int64(i)*1000)}
}

func TestLogStore(t *testing.T) {
	fs := vfs.NewMem()
	s, err := OpenLogStore(fs, "/raft", nil)
	if err != nil {
		t.Fatal(err)
	}
	if f, _ := s.FirstIndex(); f != 0 {
		t.Fatalf("empty store: first %d", f)
	}
	var l raft.Log
	if err := s.GetLog(1, &l); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("GetLog on empty: %v", err)
	}
	var batch []*raft.Log
	for i := uint64(1); i <= 100; i++ {
		batch = append(batch, mkLog(i))
	}
	if err := s.StoreLogs(batch); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLog(mkLog(101)); err != nil {
		t.Fatal(err)
	}
	check := func(first, last uint64) {
		t.Helper()
		f, _ := s.FirstIndex()
		la, _ := s.LastIndex()
		if f != first || la != last {
			t.Fatalf("bounds %d..%d, want %d..%d", f, la, first, last)
		}
		for i := first; i <= last; i++ {
			var got raft.Log
			if err := s.GetLog(i, &got); err != nil {
				t.Fatal(err)
			}
			want := mkLog(i)
			if got.Index != i || got.Term != want.Term || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) ||
				!bytes.Equal(got.Extensions, want.Extensions) || !got.AppendedAt.Equal(want.AppendedAt) {
				t.Fatalf("entry %d: %+v", i, got)
			}
		}
	}
	check(1, 101)
	// Truncate the head (after a snapshot) and the tail (a follower's
	// conflicting suffix).
	if err := s.DeleteRange(1, 40); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(91, 101); err != nil {
		t.Fatal(err)
	}
	check(41, 90)
	// Stable store.
	if _, err := s.Get([]byte("CurrentTerm")); err == nil || err.Error() != "not found" {
		t.Fatalf("missing stable key: %v (raft compares the message with \"not found\")", err)
	}
	if _, err := s.GetUint64([]byte("x")); err == nil || err.Error() != "not found" {
		t.Fatalf("missing stable uint: %v", err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenLogStore(fs, "/raft", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(41, 90)
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("term after reopen: %d, %v", v, err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "2" {
		t.Fatalf("vote after reopen: %q, %v", v, err)
	}
}

// TestLogStoreCrash: everything StoreLogs, DeleteRange and Set acknowledged
// survives a crash that drops a random share of unsynced data.
func TestLogStoreCrash(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		fs := vfs.NewCrashableMem()
		s, err := OpenLogStore(fs, "/raft", nil)
		if err != nil {
			t.Fatal(err)
		}
		var next uint64 = 1
		first := uint64(1)
		var term uint64
		for range 30 + rng.IntN(50) {
			switch rng.IntN(5) {
			case 0:
				term++
				if err := s.SetUint64([]byte("CurrentTerm"), term); err != nil {
					t.Fatal(err)
				}
			case 1:
				if next-first > 10 {
					cut := first + uint64(rng.IntN(int(next-first)/2))
					if err := s.DeleteRange(first, cut); err != nil {
						t.Fatal(err)
					}
					first = cut + 1
				}
			default:
				var b []*raft.Log
				for range 1 + rng.IntN(20) {
					b = append(b, mkLog(next))
					next++
				}
				if err := s.StoreLogs(b); err != nil {
					t.Fatal(err)
				}
			}
		}
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rand.New(rand.NewPCG(seed, 2))})
		s.Close()
		s2, err := OpenLogStore(crashed, "/raft", nil)
		if err != nil {
			t.Fatalf("seed %d: reopen after crash: %v", seed, err)
		}
		f, _ := s2.FirstIndex()
		l, _ := s2.LastIndex()
		if f != first || l != next-1 {
			t.Fatalf("seed %d: after crash bounds %d..%d, want %d..%d", seed, f, l, first, next-1)
		}
		for i := first; i < next; i++ {
			var got raft.Log
			if err := s2.GetLog(i, &got); err != nil || !bytes.Equal(got.Data, mkLog(i).Data) {
				t.Fatalf("seed %d: entry %d after crash: %v", seed, i, err)
			}
		}
		if term > 0 {
			if v, err := s2.GetUint64([]byte("CurrentTerm")); err != nil || v != term {
				t.Fatalf("seed %d: term after crash %d, %v; want %d", seed, v, err, term)
			}
		}
		s2.Close()
	}
}

// TestLogStoreSyncFailure: a failed WAL write or fsync never looks like
// success. Pebble treats it as fatal (our logger's Fatalf panics): after
// fsyncgate a failed fsync cannot be retried, so the node must crash and
// recover from what is on disk.
func TestLogStoreSyncFailure(t *testing.T) {
	var fail bool
	fs := vfs.InjectFS(vfs.NewMem(), vfs.InjectorFunc(func(op vfs.Op) error {
		if fail && (op.Kind == vfs.OpFileSync || op.Kind == vfs.OpFileSyncData || op.Kind == vfs.OpFileWrite) {
			return vfs.ErrInjected
		}
		return nil
	}))
	s, err := OpenLogStore(fs, "/raft", nil)
	if err != nil {
		t.Fatal(err)
	}
	fail = true
	panicked := false
	func() {
		defer func() { panicked = recover() != nil }()
		err = s.StoreLogs([]*raft.Log{mkLog(1)})
	}()
	if !panicked && err == nil {
		t.Fatal("StoreLogs succeeded although the disk failed")
	}
	if f, _ := s.LastIndex(); f != 0 {
		t.Fatalf("last index %d after a failed store", f)
	}
}

func TestDecodeLogRejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {1}, {2, 0, 0, 0, 0}, {1, 0, 0x80}, {1, 0, 1, 0, 5, 1}} {
		var l raft.Log
		if err := decodeLog(b, &l); err == nil {
			t.Errorf("decodeLog(%x) accepted", b)
		}
	}
}

func FuzzDecodeLog(f *testing.F) {
	f.Add(encodeLog(nil, mkLog(5)))
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if decodeLog(b, &l) != nil {
			return
		}
		again := encodeLog(nil, &l)
		var l2 raft.Log
		if err := decodeLog(again, &l2); err != nil || !bytes.Equal(l.Data, l2.Data) || l.Term != l2.Term {
			t.Fatalf("re-encoding a decoded entry: %v", err)
		}
	})
}
