package store

import (
	"context"
	"fmt"
	"time"

	"github.com/quiremq/quire/frontends/pubsub"
)

// Retained is a pubsub.RetainedStore kept in a Store: matches are served
// from a pubsub.MemoryRetained loaded at NewRetained, and every Set is
// written through to the Store (without fsync; see Store.SetRetained).
// Retained messages are local to the node in this slice: a cluster will
// keep a pointer in meta instead (issue "MQTT", Storage).
type Retained struct {
	st  *Store
	mem *pubsub.MemoryRetained
}

var _ pubsub.RetainedStore = (*Retained)(nil)

// NewRetained loads the retained messages of st.
func NewRetained(st *Store) (*Retained, error) {
	r := &Retained{st: st, mem: pubsub.NewMemoryRetained(nil)}
	ctx := context.Background()
	now := time.Now()
	var expired []*pubsub.Message
	err := st.Retained(func(m *pubsub.Message) error {
		if m.Expired(now) {
			expired = append(expired, &pubsub.Message{Topic: m.Topic})
			return nil
		}
		return r.mem.Set(ctx, m)
	})
	for _, m := range expired {
		if err == nil {
			err = st.SetRetained(m) // empty payload: delete
		}
	}
	if err != nil {
		return nil, fmt.Errorf("mqtt store: loading retained messages: %w", err)
	}
	return r, nil
}

// Set implements pubsub.RetainedStore.
func (r *Retained) Set(ctx context.Context, m *pubsub.Message) error {
	if err := r.st.SetRetained(m); err != nil {
		return fmt.Errorf("mqtt store: retained %q: %w", m.Topic, err)
	}
	return r.mem.Set(ctx, m)
}

// Match implements pubsub.RetainedStore. An expired message is dropped from
// memory when a match finds it, and from the store when the topic is next
// set (or at the next load, where it is skipped).
func (r *Retained) Match(ctx context.Context, filter string, fn func(*pubsub.Message) bool) error {
	return r.mem.Match(ctx, filter, fn)
}

// Len implements pubsub.RetainedStore.
func (r *Retained) Len() int { return r.mem.Len() }
