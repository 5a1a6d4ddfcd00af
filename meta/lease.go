package meta

import (
	"sync"
	"time"
)

// lessor keeps lease deadlines. Deadlines are not replicated: only the
// leader's matter, and only once it is ready (its FSM has applied every entry
// of earlier terms). When a node becomes ready it gives every lease a full
// TTL from that moment, so a change of leader never expires a lease early:
// the owner's last keep-alive was acknowledged, after a VerifyLeader, by a
// leader whose term ended before the new leader's promotion.
//
// Expiry is decided here and applied through the log (LeaseRevokeOp with
// expired = true), so every replica deletes the same keys at the same
// revisions.
type lessor struct {
	now func() time.Time

	mu       sync.Mutex
	ttl      map[uint64]time.Duration
	deadline map[uint64]time.Time
	pending  map[uint64]bool // expiry proposed, not yet applied
	ready    bool
}

var _ leaseHooks = (*lessor)(nil)

func newLessor(now func() time.Time) *lessor {
	return &lessor{now: now, ttl: map[uint64]time.Duration{}, deadline: map[uint64]time.Time{}, pending: map[uint64]bool{}}
}

func (l *lessor) granted(id uint64, ttl time.Duration) {
	l.mu.Lock()
	l.ttl[id] = ttl
	l.deadline[id] = l.now().Add(ttl)
	l.mu.Unlock()
}

func (l *lessor) revoked(id uint64) {
	l.mu.Lock()
	delete(l.ttl, id)
	delete(l.deadline, id)
	delete(l.pending, id)
	l.mu.Unlock()
}

func (l *lessor) reset(ttls map[uint64]time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.ttl = ttls
	l.deadline = make(map[uint64]time.Time, len(ttls))
	l.pending = map[uint64]bool{}
	for id, ttl := range ttls {
		l.deadline[id] = now.Add(ttl)
	}
}

// promote makes the lessor authoritative with a full TTL for every lease.
func (l *lessor) promote() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for id, ttl := range l.ttl {
		l.deadline[id] = now.Add(ttl)
	}
	clear(l.pending)
	l.ready = true
}

func (l *lessor) demote() {
	l.mu.Lock()
	l.ready = false
	clear(l.pending)
	l.mu.Unlock()
}

// keepAlive restarts a lease's TTL. It needs a ready leader.
func (l *lessor) keepAlive(id uint64) (time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.ready {
		return 0, ErrNotLeader
	}
	ttl, ok := l.ttl[id]
	if !ok {
		return 0, ErrLeaseNotFound
	}
	l.deadline[id] = l.now().Add(ttl)
	return ttl, nil
}

// expired returns the leases past their deadline that are not already being
// expired, and marks them pending.
func (l *lessor) expired() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.ready {
		return nil
	}
	now := l.now()
	var ids []uint64
	for id, d := range l.deadline {
		if !l.pending[id] && now.After(d) {
			l.pending[id] = true
			ids = append(ids, id)
		}
	}
	return ids
}

// unpend allows id to be proposed for expiry again (the proposal failed).
func (l *lessor) unpend(id uint64) {
	l.mu.Lock()
	delete(l.pending, id)
	l.mu.Unlock()
}
