package client

import (
	"context"
	"testing"
	"time"

	"github.com/quiremq/quire/journal/bookie/bookierpc"
)

// A lingering conn is woken by the add that makes the queue a message's
// worth (lingerBytes), not before and not by the timer; a conn that holds
// a message's worth already, or nothing, does not linger.
func TestLingerWakesWhenAMessageIsQueued(t *testing.T) {
	for _, size := range []int{1024, 100, 5000} {
		bc := &bookieConn{ctx: context.Background(), notify: make(chan struct{}, 1)}
		l := &link{conn: bc, bookie: "b", ready: func(*link) {}, idle: make(chan struct{})}
		add := func(e int) bookierpc.Add {
			return bookierpc.Add{Ledger: 1, Entry: uint64(e), Payload: make([]byte, size)}
		}
		woken := func() bool {
			select {
			case <-bc.notify:
				return true
			default:
				return false
			}
		}
		if bc.startLinger() {
			t.Fatalf("size %d: lingers with nothing queued", size)
		}
		l.send(add(0), testNow)
		if !woken() {
			t.Fatalf("size %d: the first add did not wake the conn", size)
		}
		if !bc.startLinger() {
			t.Fatalf("size %d: one add queued, no linger", size)
		}
		per := size + bookierpc.BatchAddOverhead
		k := min(lingerBelow, (lingerBytes+per-1)/per) // adds queued when it wakes
		for e := 1; e < k-1; e++ {
			l.send(add(e), testNow)
			if woken() {
				t.Fatalf("size %d: woken at %d adds queued (%d bytes), before a message's worth (%d adds)", size, e+1, (e+1)*per, k)
			}
		}
		l.send(add(k-1), testNow)
		if !woken() {
			t.Fatalf("size %d: not woken with %d adds (%d bytes) queued", size, k, k*per)
		}
		if bc.lingering {
			t.Fatalf("size %d: still lingering after the wake-up", size)
		}
		bc.stopLinger()
		if bc.startLinger() {
			t.Fatalf("size %d: lingers with a message's worth queued", size)
		}
	}
}

var testNow = time.Now()
