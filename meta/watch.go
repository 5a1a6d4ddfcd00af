package meta

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// history keeps the last changes for watchers, one per revision, in a ring
// indexed by revision. Every revision has exactly one event, so a watcher
// that reads revisions next, next+1, ... sees every change without gaps; one
// whose next revision has left the ring (or predates the last snapshot
// restore) gets ErrCompacted.
type history struct {
	mu        sync.RWMutex
	ring      []*metav1.Event
	rev       uint64        // revision of the newest change
	compacted uint64        // revisions <= compacted are not available
	wake      chan struct{} // closed and replaced on every append
}

func newHistory(n int) *history {
	return &history{ring: make([]*metav1.Event, n), wake: make(chan struct{})}
}

// oldest is the first revision still available; call with mu held.
func (h *history) oldest() uint64 {
	o := h.compacted + 1
	if n := uint64(len(h.ring)); h.rev >= n && h.rev-n+1 > o {
		o = h.rev - n + 1
	}
	return o
}

// append adds the events of one applied batch (rev is the revision after
// it) and wakes watchers.
func (h *history) append(evs []*metav1.Event, rev uint64) {
	if len(evs) == 0 && rev == h.rev {
		return
	}
	h.mu.Lock()
	n := uint64(len(h.ring))
	for _, e := range evs {
		h.ring[e.Revision%n] = e
	}
	h.rev = rev
	close(h.wake)
	h.wake = make(chan struct{})
	h.mu.Unlock()
}

// reset forgets every event: the state was replaced by a snapshot at rev.
func (h *history) reset(rev uint64) {
	h.mu.Lock()
	clear(h.ring)
	h.rev, h.compacted = rev, rev
	close(h.wake)
	h.wake = make(chan struct{})
	h.mu.Unlock()
}

// current returns the newest revision.
func (h *history) current() uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.rev
}

// read returns up to max events under prefix from revision next, the last
// revision it looked at (every change up to it has been returned), and a
// channel closed when more arrive.
func (h *history) read(prefix string, next uint64, max int) (evs []*metav1.Event, upto uint64, wake <-chan struct{}, err error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if next <= h.rev && next < h.oldest() {
		return nil, 0, nil, fmt.Errorf("%w: revision %d is gone (oldest available %d, current %d)", ErrCompacted, next, h.oldest(), h.rev)
	}
	n := uint64(len(h.ring))
	r := next
	for ; r <= h.rev && len(evs) < max; r++ {
		if e := h.ring[r%n]; strings.HasPrefix(e.Kv.Key, prefix) {
			evs = append(evs, e)
		}
	}
	return evs, r - 1, h.wake, nil
}

// watchBatch bounds the events of one watch delivery.
const watchBatch = 512

// progressEvery is how often a watcher of a quiet prefix is told the revision
// it has reached, so that it can resume after a reconnect without falling
// behind the history.
var progressEvery = time.Second

// watchLoop delivers changes under prefix from revision from (0: from now)
// through send until ctx ends or send fails. The first delivery is a
// progress notification saying where the watch starts.
func watchLoop(ctx context.Context, h *history, prefix string, from uint64, send func(evs []*metav1.Event, upto uint64) error) error {
	if from == 0 {
		from = h.current() + 1
	}
	if _, _, _, err := h.read(prefix, from, 0); err != nil {
		return err
	}
	if err := send(nil, from-1); err != nil {
		return err
	}
	next := from
	lastSent := time.Now()
	progress := time.NewTimer(progressEvery)
	defer progress.Stop()
	for {
		evs, upto, wake, err := h.read(prefix, next, watchBatch)
		if err != nil {
			return err
		}
		if len(evs) > 0 {
			if err := send(evs, upto); err != nil {
				return err
			}
			lastSent = time.Now()
		}
		advanced := upto >= next
		next = upto + 1
		if len(evs) == watchBatch || (advanced && upto < h.current()) {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wake:
		case <-progress.C:
			if time.Since(lastSent) >= progressEvery {
				if err := send(nil, next-1); err != nil {
					return err
				}
				lastSent = time.Now()
			}
			progress.Reset(progressEvery)
		}
	}
}
