package client

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/ledger"
)

// ensembleOfAll starts 3 bookies and a writer of an E=3 Qw=2 Qa=2 ledger
// on them: a bookie that stops answering has no replacement. AddTimeout
// is generous: a bookie restart (Open ~1s, more on a loaded machine) must
// fit in it, else the writer would rightly stop.
func ensembleOfAll(t *testing.T) (*cluster, *Client, *LedgerWriter) {
	t.Helper()
	c := newCluster(t, 3, "")
	cl := c.client(Options{AddTimeout: time.Minute})
	w, err := cl.CreateLedger(testCtx(t), 3, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	return c, cl, w
}

// A bookie of a 3-bookie E=3 Qw=2 Qa=2 ensemble (no replacement exists)
// restarts at the same address, twice: once while the writer is idle (its
// link's stream ended; the next add must not go out on the dead stream)
// and once with adds in flight (the link redials and resends what the old
// stream left unanswered). The writer never stops, every append
// succeeds, the ensemble never changes (the bookie came back within the
// add timeout), and the invariants hold.
func TestBookieRestartReconnects(t *testing.T) {
	c, cl, w := ensembleOfAll(t)
	ctx := testCtx(t)
	md0, _ := cl.Metadata(ctx, w.ID())
	h := newHistory()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next int
	)
	appendN := func(n int) {
		for range n {
			data := payload(next, 128)
			next++
			f, err := w.AppendAsync(ctx, data)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				if err := h.record(f, data); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
	}
	appendN(100)
	waitLAC(t, w, 99)
	victim := c.byID(md0.Fragments[0].Bookies[0])

	// Restart while idle.
	victim.kill()
	victim.restart()
	appendN(100)
	waitLAC(t, w, 199)

	// Restart with adds in flight: some are pending on the victim while
	// it is down (their write sets hold it), more arrive meanwhile.
	appendN(500)
	victim.kill()
	appendN(100)
	victim.restart()
	appendN(300)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d appends failed across the bookie restarts, first: %v", len(errs), errs[0])
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	md, _ := cl.Metadata(ctx, w.ID())
	if len(md.Fragments) != 1 || !slices.Equal(md.Fragments[0].Bookies, md0.Fragments[0].Bookies) {
		t.Fatalf("ensemble changed although the bookie came back within the add timeout: %s", md)
	}
	if last := checkInvariants(t, cl, w.ID(), h); last != int64(next-1) {
		t.Fatalf("last entry %d, want %d", last, next-1)
	}
}

// A fenced bookie's answer still stops the writer (it is the bookie's
// refusal, not a broken stream to redial), even right after the writer's
// link to it reconnected across a restart.
func TestFencedAfterReconnectStops(t *testing.T) {
	c, cl, w := ensembleOfAll(t)
	ctx := testCtx(t)
	if _, err := w.Append(ctx, []byte("a")); err != nil {
		t.Fatal(err)
	}
	md, _ := cl.Metadata(ctx, w.ID())
	b := c.byID(md.Fragments[0].Bookies[0])
	b.kill()
	b.restart()
	for range 3 { // entries 1..3: every bookie, the restarted one too
		if _, err := w.Append(ctx, []byte("b")); err != nil {
			t.Fatal(err)
		}
	}
	cl2 := c.client(Options{})
	if _, err := cl2.Recover(ctx, w.ID()); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		actx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		var err error
		for err == nil {
			_, err = w.Append(actx, []byte("c"))
		}
		done <- err
	}()
	if err := <-done; !errors.Is(err, ledger.ErrFenced) {
		t.Fatalf("append after recovery: %v, want ErrFenced", err)
	}
}
