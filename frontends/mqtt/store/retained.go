package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/quiremq/quire/frontends/pubsub"
)

// Retained is a pubsub.RetainedStore kept in a Store: matches are served
// from a pubsub.MemoryRetained loaded at NewRetained, and every Set is
// written through to the Store (without fsync; see Store.SetRetained).
//
// In a cluster every node keeps the whole cluster's retained set (a
// retained message reaches every node, frontends/mqtt/cluster.go), and the
// sets of one topic made on different nodes are ordered by their Version:
// a set replaces the topic's entry only if its version is not older
// (last writer wins), so that every node ends with the same winner
// whatever order the sets reach it in. A clear (empty payload) leaves a
// tombstone with its version, so that an older set arriving later does not
// bring the message back; tombstones are dropped once recorded more than
// TombstoneTTL ago (at load, and by SetFrom whenever their number doubled
// since the last purge).
type Retained struct {
	st   *Store
	node uint64 // the origin of Set's messages

	mu         sync.Mutex // orders the version check and the write of a topic
	mem        *pubsub.MemoryRetained
	entries    map[string]RetainedEntry // topic → its current entry, tombstones included
	tombstones int                      // of entries
	purgeAt    int                      // tombstones past which SetFrom drops the expired ones
	now        func() time.Time
}

var _ pubsub.RetainedStore = (*Retained)(nil)

// TombstoneTTL is how long a cleared topic's tombstone is kept (from when
// this node recorded it): a set older than the clear that reaches the node
// later than that (a peer's stream that lagged this long) is taken as new.
const TombstoneTTL = 7 * 24 * time.Hour

// Version orders the sets of one topic: the time the broker accepted the
// message, in Unix ms (as its shard record keeps it), then the id of the
// node it was published on. Clocks of the nodes are taken as synchronised:
// of two sets made within their skew, the later-stamped one wins.
type Version struct {
	Millis int64
	Origin uint64
}

// VersionOf is the version of m published on node origin.
func VersionOf(m *pubsub.Message, origin uint64) Version {
	return Version{Millis: m.Time.UnixMilli(), Origin: origin}
}

// Compare returns -1, 0 or 1 as v is older than, the same as or newer than
// o.
func (v Version) Compare(o Version) int {
	switch {
	case v.Millis != o.Millis:
		return cmpInt(v.Millis < o.Millis)
	case v.Origin != o.Origin:
		return cmpInt(v.Origin < o.Origin)
	}
	return 0
}

func cmpInt(less bool) int {
	if less {
		return -1
	}
	return 1
}

// RetainedEntry is a topic's retained message and the node it was
// published on; an empty payload is a tombstone (the topic was cleared).
type RetainedEntry struct {
	Msg    *pubsub.Message
	Origin uint64
	// At is when this node recorded a tombstone (Unix ms); 0 for a message.
	At int64
}

// Version is the entry's version.
func (e RetainedEntry) Version() Version { return VersionOf(e.Msg, e.Origin) }

// NewRetained loads the retained messages of st, for a node outside a
// cluster (origin 0).
func NewRetained(st *Store) (*Retained, error) { return NewClusterRetained(st, 0) }

// NewClusterRetained loads the retained messages of st; node is this
// node's id, the origin of the messages Set stores.
func NewClusterRetained(st *Store, node uint64) (*Retained, error) {
	r := &Retained{st: st, node: node, mem: pubsub.NewMemoryRetained(nil), entries: map[string]RetainedEntry{}, now: time.Now}
	ctx := context.Background()
	now := time.Now()
	var expired, purged []RetainedEntry
	err := st.RetainedEntries(func(e RetainedEntry) error {
		switch {
		case len(e.Msg.Payload) == 0:
			if now.Sub(time.UnixMilli(e.At)) > TombstoneTTL {
				purged = append(purged, e)
				return nil
			}
		case e.Msg.Expired(now):
			// A tombstone with its version: an older copy still arriving
			// from a peer is not taken.
			e = tombstone(e, now)
			expired = append(expired, e)
		default:
			if err := r.mem.Set(ctx, e.Msg); err != nil {
				return err
			}
		}
		r.entries[e.Msg.Topic] = e
		return nil
	})
	for _, e := range expired {
		if err == nil {
			err = st.PutRetained(e)
		}
	}
	for _, e := range purged {
		if err == nil {
			err = st.SetRetained(e.Msg) // empty payload: delete
		}
	}
	if err != nil {
		return nil, fmt.Errorf("mqtt store: loading retained messages: %w", err)
	}
	for _, e := range r.entries {
		if len(e.Msg.Payload) == 0 {
			r.tombstones++
		}
	}
	r.purgeAt = max(minPurge, 2*r.tombstones)
	return r, nil
}

// minPurge is the fewest tombstones SetFrom purges at.
const minPurge = 1024

// tombstone is e cleared at now, with e's version.
func tombstone(e RetainedEntry, now time.Time) RetainedEntry {
	return RetainedEntry{Msg: &pubsub.Message{Topic: e.Msg.Topic, Retain: true, Time: e.Msg.Time}, Origin: e.Origin, At: now.UnixMilli()}
}

// Node is the origin of the messages Set stores.
func (r *Retained) Node() uint64 { return r.node }

// Set implements pubsub.RetainedStore: m was published on this node. It
// replaces the topic's entry unless that one is newer (a peer's set with a
// later version), see SetFrom.
func (r *Retained) Set(ctx context.Context, m *pubsub.Message) error {
	_, err := r.SetFrom(ctx, m, r.node, true)
	return err
}

// SetFrom stores m, published on node origin, as topic m.Topic's retained
// message (an empty payload clears it) if its version is newer than the
// entry's; with ordered (m comes in its origin's order: a local publish,
// the origin's own stream, a shard read again), also if it is the same (a
// later set on the same node within the same millisecond). It reports
// whether m was taken.
func (r *Retained) SetFrom(ctx context.Context, m *pubsub.Message, origin uint64, ordered bool) (bool, error) {
	e := RetainedEntry{Msg: m, Origin: origin}
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.entries[m.Topic]; ok {
		if c := e.Version().Compare(cur.Version()); c < 0 || c == 0 && !ordered {
			return false, nil
		}
	}
	if len(m.Payload) == 0 {
		e = tombstone(e, r.now())
	}
	if err := r.st.PutRetained(e); err != nil {
		return false, fmt.Errorf("mqtt store: retained %q: %w", m.Topic, err)
	}
	if cur, ok := r.entries[m.Topic]; ok && len(cur.Msg.Payload) == 0 {
		r.tombstones--
	}
	if len(m.Payload) == 0 {
		r.tombstones++
	}
	r.entries[m.Topic] = e
	if err := r.mem.Set(ctx, e.Msg); err != nil {
		return true, err
	}
	if r.tombstones >= r.purgeAt {
		return true, r.purge()
	}
	return true, nil
}

// purge drops the tombstones recorded more than TombstoneTTL ago. r.mu is
// held.
func (r *Retained) purge() error {
	old := r.now().Add(-TombstoneTTL).UnixMilli()
	for topic, e := range r.entries {
		if len(e.Msg.Payload) == 0 && e.At < old {
			if err := r.st.SetRetained(e.Msg); err != nil { // empty payload: delete
				return fmt.Errorf("mqtt store: dropping the tombstone of %q: %w", topic, err)
			}
			delete(r.entries, topic)
			r.tombstones--
		}
	}
	r.purgeAt = max(minPurge, 2*r.tombstones)
	return nil
}

// Entries returns every entry, tombstones included, expired messages left
// out.
func (r *Retained) Entries() []RetainedEntry {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]RetainedEntry, 0, len(r.entries))
	for _, e := range r.entries {
		if len(e.Msg.Payload) == 0 || !e.Msg.Expired(now) {
			out = append(out, e)
		}
	}
	return out
}

// Sync makes the writes before it durable.
func (r *Retained) Sync() error { return r.st.Sync() }

// Match implements pubsub.RetainedStore. An expired message is dropped from
// memory when a match finds it, and from the store when the topic is next
// set (or at the next load, where it is skipped).
func (r *Retained) Match(ctx context.Context, filter string, fn func(*pubsub.Message) bool) error {
	return r.mem.Match(ctx, filter, fn)
}

// Len implements pubsub.RetainedStore.
func (r *Retained) Len() int { return r.mem.Len() }
