package bookie

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/quiremq/quire/internal/vfs"
)

var (
	fuzzTemplateOnce sync.Once
	fuzzTemplate     *vfs.MemFS
	fuzzCookies      = &MemCookieStore{}
)

// fuzzBase is a formatted, closed bookie whose journal file 1 is empty.
func fuzzBase(t testing.TB) *vfs.MemFS {
	fuzzTemplateOnce.Do(func() {
		mem := vfs.NewCrashableMem()
		b := mustOpen(t, testOptions(mem, fuzzCookies))
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		fuzzTemplate = mem
	})
	return fuzzTemplate.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 100, RNG: rand.New(rand.NewPCG(1, 1))})
}

// realJournal returns journal file 1 of a bookie that added, fenced, wrote
// LACs and deleted.
func realJournal(t testing.TB) []byte {
	mem := vfs.NewMem()
	o := testOptions(mem, &MemCookieStore{})
	o.JournalFileSize = 1 << 20
	b := mustOpen(t, o)
	for e := uint64(0); e < 20; e++ {
		for l := uint64(1); l <= 3; l++ {
			p := payloadFor(l, e)
			addSync(b, l, e, int64(e)-1, p[:min(len(p), int(e*7)%64)], e%5 == 4)
		}
	}
	b.Fence(2)
	b.WriteLAC(3, 17)
	b.DeleteLedger(1)
	addSync(b, 2, 20, 19, []byte("recovery"), true)
	data, err := vfs.ReadFile(mem, mem.PathJoin(o.JournalDir, fileName(1, journalExt)))
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	end, _ := decodeJournal(data, 1, 0, func(*op, int64) error { return nil })
	return data[:end+64]
}

// FuzzJournalReplay feeds arbitrary bytes as a journal file: decoding never
// panics, every decoded record re-encodes to exactly the bytes it was read
// from (so it passed its checksum and nothing was invented), and a bookie
// replaying the file opens and holds exactly the entries those records
// describe.
func FuzzJournalReplay(f *testing.F) {
	real := realJournal(f)
	f.Add(real)
	f.Add(real[:len(real)/2])
	flipped := bytes.Clone(real)
	flipped[len(flipped)/3] ^= 0x40
	f.Add(flipped)
	f.Add([]byte{})
	f.Add(make([]byte, 100))
	f.Fuzz(func(t *testing.T, data []byte) {
		type key struct{ l, e uint64 }
		want := map[key][]byte{}
		var deleted []uint64
		end, err := decodeJournal(data, 1, 0, func(o *op, end int64) error {
			start := end - int64(o.encodedSize())
			if start < 0 || end > int64(len(data)) {
				t.Fatalf("record [%d,%d) outside %d bytes", start, end, len(data))
			}
			if re := appendRecord(nil, 1, o); !bytes.Equal(re, data[start:end]) {
				t.Fatalf("record at %d does not re-encode to its bytes", start)
			}
			switch o.kind {
			case kindAdd:
				want[key{o.ledger, o.entry}] = bytes.Clone(o.payload)
			case kindDelete:
				deleted = append(deleted, o.ledger)
				for k := range want {
					if k.l == o.ledger {
						delete(want, k)
					}
				}
			}
			return nil
		})
		if err != nil || end > int64(len(data)) {
			t.Fatalf("decode: end %d of %d, %v", end, len(data), err)
		}

		mem := fuzzBase(t)
		o := testOptions(mem, fuzzCookies)
		jf, err := mem.Create(mem.PathJoin(o.JournalDir, fileName(1, journalExt)), vfs.CategoryJournal)
		if err != nil {
			t.Fatal(err)
		}
		jf.Write(bytes.Clone(data))
		jf.Sync()
		jf.Close()
		o.MaxEntrySize = MaxEntrySizeLimit
		b, err := Open(o)
		if err != nil {
			t.Fatalf("Open on a fuzzed journal: %v", err)
		}
		defer b.Close()
		for k, p := range want {
			got, err := b.ReadEntry(k.l, k.e, false)
			if err != nil || !bytes.Equal(got, p) {
				t.Fatalf("entry %d/%d: %v", k.l, k.e, err)
			}
		}
		for _, l := range deleted {
			if _, ok := want[key{l, 0}]; ok {
				continue
			}
			if _, err := b.ReadEntry(l, 0, false); !errors.Is(err, ErrNoSuchEntry) {
				t.Fatalf("deleted ledger %d: %v", l, err)
			}
		}
	})
}
