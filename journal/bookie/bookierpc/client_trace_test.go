package bookierpc

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Every answered add carries its round trip on the stream: sent when its
// message was handed to gRPC (after AddBatch was called, before it
// returned), answered when its answer arrived (after it was sent, before
// done was called).
func TestAddResultRoundTrip(t *testing.T) {
	r := newRig(t, ServerOptions{})
	const ledger, n, per = 3, 120, 8
	var mu sync.Mutex
	sentBy := map[uint64][2]time.Time{} // entry → AddBatch called, returned
	got := 0
	s, err := r.client.AddStream(context.Background(), func(res AddResult) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		got++
		if res.Err != nil {
			t.Errorf("entry %d: %v", res.Entry, res.Err)
			return
		}
		w := sentBy[res.Entry] // w[1] is zero if answered before AddBatch returned
		if res.Sent.Before(w[0]) || !w[1].IsZero() && res.Sent.After(w[1]) {
			t.Errorf("entry %d: sent at %v, outside AddBatch (%v .. %v)", res.Entry, res.Sent, w[0], w[1])
		}
		if res.Answered.Before(res.Sent) || res.Answered.After(now) {
			t.Errorf("entry %d: answered at %v: before it was sent (%v) or after done (%v)", res.Entry, res.Answered, res.Sent, now)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for first := uint64(0); first < n; first += per {
		var adds []Add
		for e := first; e < first+per; e++ {
			adds = append(adds, Add{Ledger: ledger, Entry: e, LAC: -1, Payload: payloadFor(ledger, e)})
		}
		called := time.Now()
		mu.Lock()
		for _, a := range adds {
			sentBy[a.Entry] = [2]time.Time{called}
		}
		mu.Unlock()
		if err := s.AddBatch(adds); err != nil {
			t.Fatal(err)
		}
		returned := time.Now()
		mu.Lock()
		for _, a := range adds {
			sentBy[a.Entry] = [2]time.Time{called, returned}
		}
		mu.Unlock()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got != n {
		t.Fatalf("%d answers, want %d", got, n)
	}
}
