package schema

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/quiremq/quire/meta"
)

// Registration keeps a node registered and up: it writes /nodes/<id>, and
// /live/<id> under a lease that it keeps alive every TTL/3. When the lease
// is lost (the node was cut off longer than the TTL and the leader expired
// it), it grants a new one and writes /live/<id> again.
type Registration struct {
	kv     meta.KV
	node   Node
	ttl    time.Duration
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	lease meta.LeaseID
}

// Register registers node and starts heartbeating. Close stops it.
func Register(ctx context.Context, kv meta.KV, node Node, ttl time.Duration, log *slog.Logger) (*Registration, error) {
	if log == nil {
		log = slog.Default()
	}
	if node.StartedAt.IsZero() {
		node.StartedAt = time.Now().UTC()
	}
	if _, err := Put(ctx, kv, NodeKey(node.ID), node); err != nil {
		return nil, err
	}
	r := &Registration{kv: kv, node: node, ttl: ttl, log: log, done: make(chan struct{})}
	if err := r.goLive(ctx); err != nil {
		return nil, err
	}
	hctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.heartbeat(hctx)
	return r, nil
}

func (r *Registration) goLive(ctx context.Context) error {
	id, err := r.kv.Grant(ctx, r.ttl)
	if err != nil {
		return err
	}
	if _, err := Put(ctx, r.kv, LiveKey(r.node.ID), r.node, meta.WithLease(id)); err != nil {
		return err
	}
	r.mu.Lock()
	r.lease = id
	r.mu.Unlock()
	return nil
}

// Lease returns the current lease (for attaching other keys, such as shard
// ownership, to the node's liveness).
func (r *Registration) Lease() meta.LeaseID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

func (r *Registration) heartbeat(ctx context.Context) {
	defer close(r.done)
	for ctx.Err() == nil {
		err := meta.KeepLeaseAlive(ctx, r.kv, r.Lease(), r.ttl, r.ttl/3)
		if err == nil || ctx.Err() != nil {
			return
		}
		r.log.Warn("meta: node lease lost; registering again", "node", r.node.ID, "err", err)
		for ctx.Err() == nil {
			if err := r.goLive(ctx); err == nil {
				break
			} else if !errors.Is(err, context.Canceled) {
				r.log.Warn("meta: re-registering", "node", r.node.ID, "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(r.ttl / 3):
			}
		}
	}
}

// Close stops heartbeating and revokes the lease, so the node shows as down
// at once (a node that crashes instead shows as down when its lease
// expires).
func (r *Registration) Close(ctx context.Context) error {
	r.cancel()
	<-r.done
	err := r.kv.Revoke(ctx, r.Lease())
	if errors.Is(err, meta.ErrLeaseNotFound) {
		return nil
	}
	return err
}

// abandon stops heartbeating without revoking: a crash, for tests.
func (r *Registration) abandon() {
	r.cancel()
	<-r.done
}
