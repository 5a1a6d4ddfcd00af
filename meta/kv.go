package meta

import (
	"context"
	"time"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// KV is the versioned key-value store, as served by a Server in process and
// by a Client over gRPC. Both pass the same conformance suite.
type KV interface {
	// Get returns the key, or ErrNotFound. Linearizable unless Stale().
	Get(ctx context.Context, key string, opts ...ReadOption) (KeyValue, error)
	// List returns a page of the keys under prefix, in key order.
	List(ctx context.Context, prefix string, opts ListOptions) (ListResult, error)
	// Put writes key. With IfVersion it is a compare-and-swap: it fails
	// with a *VersionMismatchError unless the key's version is the one given
	// (0: the key must not exist). WithLease attaches the key to a lease.
	Put(ctx context.Context, key string, value []byte, opts ...WriteOption) (KeyValue, error)
	// Delete removes key and returns the revision of the delete; ErrNotFound
	// when there is no key. IfVersion makes it conditional.
	Delete(ctx context.Context, key string, opts ...WriteOption) (uint64, error)
	// Watch delivers every change under prefix from revision from (0: from
	// now) in revision order without gaps, until ctx ends or an error (the
	// last response has Err set; ErrCompacted means: List and watch again).
	Watch(ctx context.Context, prefix string, from uint64) <-chan WatchResponse
	// Grant creates a lease with the given TTL.
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAlive restarts the lease's TTL and returns it; ErrLeaseNotFound
	// when the lease has expired or was revoked.
	KeepAlive(ctx context.Context, id LeaseID) (time.Duration, error)
	// Revoke deletes the lease and every key attached to it.
	Revoke(ctx context.Context, id LeaseID) error
}

// LeaseID names a lease; 0 is no lease.
type LeaseID uint64

// KeyValue is a key with its value and metadata.
type KeyValue struct {
	Key   string
	Value []byte
	// Version is the revision of the key's last write; never reused.
	Version uint64
	// CreateRevision is the revision that created the key.
	CreateRevision uint64
	// Lease is the lease the key is attached to (0: none).
	Lease LeaseID
}

// EventType says what a change did.
type EventType uint8

// Event types.
const (
	EventPut EventType = iota
	EventDelete
)

func (t EventType) String() string {
	if t == EventDelete {
		return "DELETE"
	}
	return "PUT"
}

// Event is one change. For a delete, KV holds the key and the version that
// was deleted.
type Event struct {
	Type     EventType
	KV       KeyValue
	Revision uint64
}

// WatchResponse is one delivery of a watch: events in revision order, and
// the revision up to which every change has been delivered (Events may be
// empty: a progress notification). Err ends the watch.
type WatchResponse struct {
	Events   []Event
	Revision uint64
	Err      error
}

// ListOptions select a page of a List.
type ListOptions struct {
	// StartAfter returns only keys greater than it (the last key of the
	// previous page).
	StartAfter string
	// Limit is the page size; 0 means the server's default (the largest).
	Limit int
	// Stale serves the list from the contacted node's state.
	Stale bool
}

// ListResult is one page.
type ListResult struct {
	KVs []KeyValue
	// More is true when keys under the prefix follow the last one.
	More bool
	// Revision is the store's revision when the page was read.
	Revision uint64
}

// ReadOption modifies a read.
type ReadOption func(*readOpts)

type readOpts struct{ stale bool }

// Stale serves the read from the contacted node's own state, which may lag
// the leader's, instead of a linearizable read.
func Stale() ReadOption { return func(o *readOpts) { o.stale = true } }

// WriteOption modifies a Put or Delete.
type WriteOption func(*writeOpts)

type writeOpts struct {
	check   bool
	version uint64
	lease   LeaseID
}

// IfVersion makes a write conditional on the key's version (0: the key must
// not exist).
func IfVersion(v uint64) WriteOption {
	return func(o *writeOpts) { o.check, o.version = true, v }
}

// WithLease attaches the written key to a lease: it is deleted when the
// lease expires or is revoked.
func WithLease(id LeaseID) WriteOption { return func(o *writeOpts) { o.lease = id } }

func readOptions(opts []ReadOption) readOpts {
	var o readOpts
	for _, f := range opts {
		f(&o)
	}
	return o
}

func writeOptions(opts []WriteOption) writeOpts {
	var o writeOpts
	for _, f := range opts {
		f(&o)
	}
	return o
}

func kvFromProto(p *metav1.KeyValue) KeyValue {
	kv := ownedKV(p)
	kv.Value = append([]byte(nil), kv.Value...)
	return kv
}

// ownedKV converts a KeyValue the caller owns (just decoded) without
// copying its value.
func ownedKV(p *metav1.KeyValue) KeyValue {
	if p == nil {
		return KeyValue{}
	}
	return KeyValue{Key: p.Key, Value: p.Value, Version: p.Version, CreateRevision: p.CreateRevision, Lease: LeaseID(p.Lease)}
}

func eventFromProto(e *metav1.Event) Event {
	t := EventPut
	if e.Type == metav1.Event_DELETE {
		t = EventDelete
	}
	return Event{Type: t, KV: kvFromProto(e.Kv), Revision: e.Revision}
}

// prefixEnd returns the smallest key greater than every key with prefix p
// ("" when there is none: p is empty or all 0xff).
func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return ""
}
