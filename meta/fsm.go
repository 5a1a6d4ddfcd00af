package meta

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/RaduBerinde/btreemap"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// fsm is the replicated state machine: the key-value map, the leases and the
// revision counter, in memory, plus the watch history. Raft snapshots it
// (copy-on-write clone of the B-tree, so applies continue while the snapshot
// is written) and restores it on start and on InstallSnapshot.
//
// Every mutation happens in ApplyBatch (or Restore) under mu; readers take
// mu.RLock. Lock order: fsm.mu → history.mu, fsm.mu → lessor.mu.
type fsm struct {
	mu      sync.RWMutex
	kvs     *btreemap.BTreeMap[string, *metav1.KeyValue]
	leases  map[uint64]*leaseState
	rev     uint64 // revision of the last change
	applied uint64 // index of the last log entry applied

	hist  *history
	hooks leaseHooks
}

type leaseState struct {
	ttl  time.Duration
	keys map[string]struct{}
}

// leaseHooks is told about every lease the state machine creates or
// deletes (the leader keeps deadlines in memory, see lessor).
type leaseHooks interface {
	granted(id uint64, ttl time.Duration)
	revoked(id uint64)
	reset(ttls map[uint64]time.Duration)
}

// applyResult is the response of one applied command.
type applyResult struct {
	kv    *metav1.KeyValue // put: the new key
	rev   uint64           // revision after the command
	lease uint64           // lease grant: the id
	err   error            // ErrNotFound, *VersionMismatchError, ErrLeaseNotFound, ErrInvalid
	batch []applyResult    // a CommandBatch: one result per op, in order
}

var (
	_ raft.FSM         = (*fsm)(nil)
	_ raft.BatchingFSM = (*fsm)(nil)
)

func newKVTree() *btreemap.BTreeMap[string, *metav1.KeyValue] {
	return btreemap.New[string, *metav1.KeyValue](32, strings.Compare)
}

func newFSM(historySize int, hooks leaseHooks) *fsm {
	return &fsm{kvs: newKVTree(), leases: map[uint64]*leaseState{}, hist: newHistory(historySize), hooks: hooks}
}

// Apply applies one entry.
func (f *fsm) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch applies committed entries under one lock, then wakes watchers.
func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	res := make([]any, len(logs))
	var evs []*metav1.Event
	f.mu.Lock()
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			var r *applyResult
			r, evs = f.applyCommand(l, evs)
			res[i] = r
		}
		f.applied = l.Index
	}
	f.hist.append(evs, f.rev)
	f.mu.Unlock()
	return res
}

func (f *fsm) applyCommand(l *raft.Log, evs []*metav1.Event) (*applyResult, []*metav1.Event) {
	if ops, ok := decodeBatch(l.Data); ok {
		return f.applyBatch(ops, evs)
	}
	var cmd metav1.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		return &applyResult{rev: f.rev, err: fmt.Errorf("%w: undecodable command at index %d: %v", ErrInvalid, l.Index, err)}, evs
	}
	switch op := cmd.Op.(type) {
	case *metav1.Command_Put:
		r := &applyResult{}
		evs = f.put(putWrite(op.Put), r, evs)
		return r, evs
	case *metav1.Command_Delete:
		r := &applyResult{}
		evs = f.delete(deleteWrite(op.Delete), r, evs)
		return r, evs
	case *metav1.Command_LeaseGrant:
		// The lease id is the index of the entry: unique, the same on
		// every replica, and never reused.
		ttl := time.Duration(op.LeaseGrant.TtlMs) * time.Millisecond
		f.leases[l.Index] = &leaseState{ttl: ttl, keys: map[string]struct{}{}}
		f.hooks.granted(l.Index, ttl)
		return &applyResult{rev: f.rev, lease: l.Index}, evs
	case *metav1.Command_LeaseRevoke:
		return f.revoke(op.LeaseRevoke.Id, evs)
	case *metav1.Command_Batch:
		// Not in decodeBatch's form (e.g. an op that is not a put or a
		// delete): decoded by proto, applied the same way.
		ops := make([]writeOp, len(op.Batch.Ops))
		for i, c := range op.Batch.Ops {
			switch x := c.Op.(type) {
			case *metav1.Command_Put:
				ops[i] = putWrite(x.Put)
			case *metav1.Command_Delete:
				ops[i] = deleteWrite(x.Delete)
			default:
				ops[i].invalid = true
			}
		}
		r, evs := f.applyBatch(ops, evs)
		for i := range ops {
			if ops[i].invalid {
				r.batch[i].err = fmt.Errorf("%w: op %d of the batch at index %d is not a put or delete", ErrInvalid, i, l.Index)
			}
		}
		return r, evs
	default:
		return &applyResult{rev: f.rev, err: fmt.Errorf("%w: unknown command at index %d", ErrInvalid, l.Index)}, evs
	}
}

// applyBatch applies the ops of a CommandBatch in order, each with its own
// result: a failed CAS fails only itself. An invalid op is not applied
// (its error is the caller's to fill in).
func (f *fsm) applyBatch(ops []writeOp, evs []*metav1.Event) (*applyResult, []*metav1.Event) {
	r := &applyResult{batch: make([]applyResult, len(ops))}
	for i := range ops {
		switch {
		case ops[i].invalid:
			r.batch[i].rev = f.rev
		case ops[i].del:
			evs = f.delete(ops[i], &r.batch[i], evs)
		default:
			evs = f.put(ops[i], &r.batch[i], evs)
		}
	}
	r.rev = f.rev
	return r, evs
}

// put applies a put, setting r.
func (f *fsm) put(p writeOp, r *applyResult, evs []*metav1.Event) []*metav1.Event {
	old, exists := f.get(p.key)
	if p.check {
		var cur uint64
		if exists {
			cur = old.Version
		}
		if cur != p.expect {
			*r = applyResult{rev: f.rev, err: &VersionMismatchError{Key: p.key, Expected: p.expect, Current: cur}}
			return evs
		}
	}
	var ls *leaseState
	if p.lease != 0 {
		if ls = f.leases[p.lease]; ls == nil {
			*r = applyResult{rev: f.rev, err: fmt.Errorf("%w: %d (put %q)", ErrLeaseNotFound, p.lease, p.key)}
			return evs
		}
	}
	f.rev++
	kv := &metav1.KeyValue{Key: p.key, Value: p.value, Version: f.rev, CreateRevision: f.rev, Lease: p.lease}
	if exists {
		kv.CreateRevision = old.CreateRevision
		if old.Lease != 0 && old.Lease != p.lease {
			if ols := f.leases[old.Lease]; ols != nil {
				delete(ols.keys, p.key)
			}
		}
	}
	if ls != nil {
		ls.keys[p.key] = struct{}{}
	}
	f.kvs.ReplaceOrInsert(p.key, kv)
	*r = applyResult{kv: kv, rev: f.rev}
	return append(evs, &metav1.Event{Type: metav1.Event_PUT, Kv: kv, Revision: f.rev})
}

// delete applies a delete, setting r.
func (f *fsm) delete(d writeOp, r *applyResult, evs []*metav1.Event) []*metav1.Event {
	old, exists := f.get(d.key)
	switch {
	case !exists && d.check && d.expect != 0:
		*r = applyResult{rev: f.rev, err: &VersionMismatchError{Key: d.key, Expected: d.expect}}
		return evs
	case !exists:
		*r = applyResult{rev: f.rev, err: fmt.Errorf("%w: %q", ErrNotFound, d.key)}
		return evs
	case d.check && old.Version != d.expect:
		*r = applyResult{rev: f.rev, err: &VersionMismatchError{Key: d.key, Expected: d.expect, Current: old.Version}}
		return evs
	}
	evs = f.deleteKey(old, evs)
	*r = applyResult{rev: f.rev}
	return evs
}

// deleteKey removes an existing key and records its event.
func (f *fsm) deleteKey(old *metav1.KeyValue, evs []*metav1.Event) []*metav1.Event {
	f.rev++
	f.kvs.Delete(old.Key)
	if old.Lease != 0 {
		if ls := f.leases[old.Lease]; ls != nil {
			delete(ls.keys, old.Key)
		}
	}
	gone := &metav1.KeyValue{Key: old.Key, Version: old.Version, CreateRevision: old.CreateRevision, Lease: old.Lease}
	return append(evs, &metav1.Event{Type: metav1.Event_DELETE, Kv: gone, Revision: f.rev})
}

func (f *fsm) revoke(id uint64, evs []*metav1.Event) (*applyResult, []*metav1.Event) {
	ls := f.leases[id]
	if ls == nil {
		return &applyResult{rev: f.rev, err: fmt.Errorf("%w: %d", ErrLeaseNotFound, id)}, evs
	}
	// Delete in key order: every replica must assign the same revisions.
	keys := make([]string, 0, len(ls.keys))
	for k := range ls.keys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if old, ok := f.get(k); ok {
			evs = f.deleteKey(old, evs)
		}
	}
	delete(f.leases, id)
	f.hooks.revoked(id)
	return &applyResult{rev: f.rev}, evs
}

// get returns a key; call with mu held.
func (f *fsm) get(key string) (*metav1.KeyValue, bool) {
	_, kv, ok := f.kvs.Get(key)
	return kv, ok
}

// read returns a key and the current revision.
func (f *fsm) read(key string) (*metav1.KeyValue, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	kv, _ := f.get(key)
	return kv, f.rev
}

// list returns up to limit keys under prefix greater than after.
func (f *fsm) list(prefix, after string, limit int) (kvs []*metav1.KeyValue, more bool, rev uint64) {
	lo := btreemap.GE(prefix)
	if after >= prefix {
		lo = btreemap.GT(after)
	}
	hi := btreemap.Max[string]()
	if end := prefixEnd(prefix); end != "" {
		hi = btreemap.LT(end)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, kv := range f.kvs.Ascend(lo, hi) {
		if len(kvs) == limit {
			more = true
			break
		}
		kvs = append(kvs, kv)
	}
	return kvs, more, f.rev
}

func (f *fsm) revision() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.rev
}

// Snapshot captures the state; Persist writes it while applies continue.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &fsmSnapshot{kvs: f.kvs.Clone(), rev: f.rev, applied: f.applied}
	for id, ls := range f.leases {
		s.leases = append(s.leases, &metav1.Lease{Id: id, TtlMs: ls.ttl.Milliseconds()})
	}
	slices.SortFunc(s.leases, func(a, b *metav1.Lease) int { return cmpU64(a.Id, b.Id) })
	return s, nil
}

type fsmSnapshot struct {
	kvs          *btreemap.BTreeMap[string, *metav1.KeyValue]
	leases       []*metav1.Lease
	rev, applied uint64
}

// Persist writes the snapshot format (see the package doc).
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	err := s.write(sink)
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("meta: writing snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	put := func(r *metav1.SnapshotRecord) error {
		_, err := protodelim.MarshalTo(bw, r)
		return err
	}
	if err := put(&metav1.SnapshotRecord{Rec: &metav1.SnapshotRecord_Header{Header: &metav1.SnapshotHeader{
		Format: 1, Revision: s.rev, AppliedIndex: s.applied}}}); err != nil {
		return err
	}
	for _, l := range s.leases {
		if err := put(&metav1.SnapshotRecord{Rec: &metav1.SnapshotRecord_Lease{Lease: l}}); err != nil {
			return err
		}
	}
	var n uint64
	for _, kv := range s.kvs.Ascend(btreemap.Min[string](), btreemap.Max[string]()) {
		if err := put(&metav1.SnapshotRecord{Rec: &metav1.SnapshotRecord_Kv{Kv: kv}}); err != nil {
			return err
		}
		n++
	}
	if err := put(&metav1.SnapshotRecord{Rec: &metav1.SnapshotRecord_Trailer{Trailer: &metav1.SnapshotTrailer{
		Leases: uint64(len(s.leases)), Kvs: n}}}); err != nil {
		return err
	}
	return bw.Flush()
}

// Release does nothing: the clone is garbage collected.
func (s *fsmSnapshot) Release() {}

// Restore replaces the state with a snapshot. Watchers whose next revision
// is at or below the snapshot's get ErrCompacted: the history is gone.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	kvs, leases, hdr, err := readSnapshot(bufio.NewReaderSize(rc, 256<<10))
	if err != nil {
		return fmt.Errorf("meta: restoring snapshot: %w", err)
	}
	ttls := make(map[uint64]time.Duration, len(leases))
	for id, ls := range leases {
		ttls[id] = ls.ttl
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kvs, f.leases, f.rev, f.applied = kvs, leases, hdr.Revision, hdr.AppliedIndex
	f.hist.reset(hdr.Revision)
	f.hooks.reset(ttls)
	return nil
}

func readSnapshot(r *bufio.Reader) (*btreemap.BTreeMap[string, *metav1.KeyValue], map[uint64]*leaseState, *metav1.SnapshotHeader, error) {
	kvs := newKVTree()
	leases := map[uint64]*leaseState{}
	var hdr *metav1.SnapshotHeader
	var nkv uint64
	opts := protodelim.UnmarshalOptions{MaxSize: 64 << 20}
	for {
		var rec metav1.SnapshotRecord
		if err := opts.UnmarshalFrom(r, &rec); err != nil {
			if err == io.EOF {
				return nil, nil, nil, fmt.Errorf("%w: truncated (no trailer)", ErrInvalid)
			}
			return nil, nil, nil, err
		}
		switch x := rec.Rec.(type) {
		case *metav1.SnapshotRecord_Header:
			if hdr != nil || x.Header.Format != 1 {
				return nil, nil, nil, fmt.Errorf("%w: bad header %v", ErrInvalid, x.Header)
			}
			hdr = x.Header
		case *metav1.SnapshotRecord_Lease:
			if hdr == nil {
				return nil, nil, nil, fmt.Errorf("%w: lease before header", ErrInvalid)
			}
			leases[x.Lease.Id] = &leaseState{ttl: time.Duration(x.Lease.TtlMs) * time.Millisecond, keys: map[string]struct{}{}}
		case *metav1.SnapshotRecord_Kv:
			if hdr == nil {
				return nil, nil, nil, fmt.Errorf("%w: key before header", ErrInvalid)
			}
			kv := x.Kv
			if kv.Lease != 0 {
				ls := leases[kv.Lease]
				if ls == nil {
					return nil, nil, nil, fmt.Errorf("%w: key %q attached to unknown lease %d", ErrInvalid, kv.Key, kv.Lease)
				}
				ls.keys[kv.Key] = struct{}{}
			}
			kvs.ReplaceOrInsert(kv.Key, kv)
			nkv++
		case *metav1.SnapshotRecord_Trailer:
			if hdr == nil || x.Trailer.Kvs != nkv || x.Trailer.Leases != uint64(len(leases)) {
				return nil, nil, nil, fmt.Errorf("%w: trailer %v does not match %d keys, %d leases", ErrInvalid, x.Trailer, nkv, len(leases))
			}
			return kvs, leases, hdr, nil
		default:
			return nil, nil, nil, fmt.Errorf("%w: unknown record", ErrInvalid)
		}
	}
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
