package bookie

import (
	"bytes"
	"errors"
	"testing"

	"github.com/quiremq/quire/internal/vfs"
)

func TestAddReadRestart(t *testing.T) {
	fs := vfs.NewMem()
	cookies := &MemCookieStore{}
	o := testOptions(fs, cookies)
	b := mustOpen(t, o)
	for l := uint64(1); l <= 3; l++ {
		for e := uint64(0); e < 200; e++ {
			if err := addSync(b, l, e, int64(e)-1, payloadFor(l, e), false); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(b *Bookie) {
		t.Helper()
		for l := uint64(1); l <= 3; l++ {
			for e := uint64(0); e < 200; e++ {
				got, err := b.ReadEntry(l, e, false)
				if err != nil || !bytes.Equal(got, payloadFor(l, e)) {
					t.Fatalf("read %d/%d: %v (len %d)", l, e, err, len(got))
				}
			}
			if _, err := b.ReadEntry(l, 200, false); !errors.Is(err, ErrNoSuchEntry) || errors.Is(err, ErrNoSuchLedger) {
				t.Fatalf("read past end: %v", err)
			}
			if lac, err := b.ReadLAC(l, false); err != nil || lac != 198 {
				t.Fatalf("lac %d: %v", lac, err)
			}
		}
		if _, err := b.ReadEntry(9, 0, false); !errors.Is(err, ErrNoSuchLedger) || !errors.Is(err, ErrNoSuchEntry) {
			t.Fatalf("unknown ledger: %v", err)
		}
	}
	check(b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b = mustOpen(t, o)
	check(b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
