package client

import (
	"context"
	"testing"
)

// Close of a writer whose loop answers the close and then exits must
// report the answer (nil), not take the exit for a failure. Found by
// journal/faulttest, where the final takeover's Close of its empty ledger
// returned ErrClosed under load: when the answer and the loop's exit are
// both ready by the time Close selects, select picks either. Here a loop
// that spins on its mailbox answers at once, so that Close often selects
// late.
func TestCloseAnsweredThenExited(t *testing.T) {
	ctx := context.Background()
	for i := range 20000 {
		w := &LedgerWriter{box: newMailbox[wevent](), exited: make(chan struct{})}
		go func() {
			var evs []wevent
			for {
				evs = w.box.take(evs)
				if len(evs) > 0 {
					evs[0].(evClose).reply <- nil
					w.box.close()
					close(w.exited)
					return
				}
			}
		}()
		if err := w.Close(ctx); err != nil {
			t.Fatalf("close %d: %v", i, err)
		}
	}
}
