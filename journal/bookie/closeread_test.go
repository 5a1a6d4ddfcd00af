package bookie

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quiremq/quire/internal/vfs"
)

// TestReadsDuringClose: reads still running when Close is called (a gRPC
// server does not wait for its handlers) end with their data or ErrClosed,
// never on a closed index or file (Pebble panics on an iterator of a
// closed DB).
func TestReadsDuringClose(t *testing.T) {
	for round := range 20 {
		b := mustOpen(t, testOptions(vfs.NewMem(), &MemCookieStore{}))
		for e := range uint64(64) {
			if err := addSync(b, 1, e, int64(e)-1, payloadFor(1, e), false); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.checkpoint(); err != nil { // entries in the entry logs and index, not pending
			t.Fatal(err)
		}
		var stop atomic.Bool
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 4 {
			wg.Go(func() {
				for i := 0; !stop.Load(); i++ {
					var err error
					if w%2 == 0 {
						_, err = b.ReadEntry(1, uint64(i%64), false)
					} else {
						err = b.ReadRange(1, 0, 63, 1, func(uint64, []byte) error { return nil })
					}
					if err != nil {
						if !errors.Is(err, ErrClosed) {
							errs <- err
						}
						return
					}
				}
			})
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		stop.Store(true)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("round %d: a read during Close: %v", round, err)
		}
	}
}
