package bookie

import (
	"sync"
	"testing"
	"time"

	"github.com/quiremq/quire/internal/vfs"
)

// With IdleGroupWait, adds queued while the syncer is idle wait for one
// another: adds made one by one, none of them acknowledged meanwhile, all
// go in one group (one fdatasync), acknowledged no sooner than
// IdleGroupWait after the first was queued. Without it the first add goes
// alone at once.
func TestIdleGroupWait(t *testing.T) {
	for _, wait := range []time.Duration{0, 150 * time.Millisecond} {
		o := testOptions(vfs.NewMem(), &MemCookieStore{})
		o.MaxGroupWait = time.Hour // only IdleGroupWait (or an idle syncer) cuts the group
		o.IdleGroupWait = wait
		var mu sync.Mutex
		var syncs []int // bytes per sync
		o.syncHook = func(_ time.Duration, n int) {
			mu.Lock()
			syncs = append(syncs, n)
			mu.Unlock()
		}
		b := mustOpen(t, o)
		mu.Lock()
		syncs = nil // Open's
		mu.Unlock()

		const adds = 5
		acked := make(chan time.Duration, adds)
		start := time.Now()
		for e := range uint64(adds) {
			b.AddEntry(1, e, int64(e)-1, payloadFor(1, e), false, func(err error) {
				if err != nil {
					t.Error(err)
				}
				acked <- time.Since(start)
			})
		}
		var first time.Duration
		for i := range adds {
			d := <-acked
			if i == 0 {
				first = d
			}
		}
		mu.Lock()
		got := len(syncs)
		mu.Unlock()
		if wait > 0 {
			if got != 1 {
				t.Errorf("IdleGroupWait %v: %d syncs for %d adds queued one after another, want 1", wait, got, adds)
			}
			if first < wait {
				t.Errorf("IdleGroupWait %v: first add acknowledged after %v", wait, first)
			}
		} else if first >= time.Second {
			t.Errorf("IdleGroupWait 0: first add acknowledged after %v with the syncer idle (MaxGroupWait %v)", first, o.MaxGroupWait)
		}
		requireEntries(t, b, 1, 0, adds, "after the group")
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
