package meta

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

type nopHooks struct{}

func (nopHooks) granted(uint64, time.Duration)  {}
func (nopHooks) revoked(uint64)                 {}
func (nopHooks) reset(map[uint64]time.Duration) {}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

func cmdLog(i uint64, c *metav1.Command) *raft.Log {
	b, _ := proto.Marshal(c)
	return &raft.Log{Index: i, Type: raft.LogCommand, Data: b}
}

// randomCommands is a random mix of puts, CAS puts, deletes and lease
// operations over a few keys.
func randomCommands(rng *rand.Rand, n int) []*raft.Log {
	var logs []*raft.Log
	var leases []uint64
	for i := 1; i <= n; i++ {
		idx := uint64(i)
		key := fmt.Sprintf("k/%d", rng.IntN(8))
		var c *metav1.Command
		switch rng.IntN(8) {
		case 0:
			c = &metav1.Command{Op: &metav1.Command_LeaseGrant{LeaseGrant: &metav1.LeaseGrantOp{TtlMs: 1000}}}
			leases = append(leases, idx)
		case 1:
			if len(leases) > 0 {
				c = &metav1.Command{Op: &metav1.Command_LeaseRevoke{LeaseRevoke: &metav1.LeaseRevokeOp{Id: leases[rng.IntN(len(leases))]}}}
			}
		case 2:
			c = &metav1.Command{Op: &metav1.Command_Delete{Delete: &metav1.DeleteRequest{Key: key, CheckVersion: rng.IntN(2) == 0, ExpectVersion: uint64(rng.IntN(int(idx)))}}}
		case 3:
			c = &metav1.Command{Op: &metav1.Command_Put{Put: &metav1.PutRequest{Key: key, Value: []byte{byte(i)}, CheckVersion: true, ExpectVersion: uint64(rng.IntN(int(idx)))}}}
		case 4:
			// Several writes in one entry (the leader's write batcher): CAS
			// puts that may build on one another, deletes, plain puts.
			var ops []*metav1.Command
			for j := range 1 + rng.IntN(6) {
				k := fmt.Sprintf("k/%d", rng.IntN(8))
				switch rng.IntN(3) {
				case 0:
					ops = append(ops, &metav1.Command{Op: &metav1.Command_Delete{Delete: &metav1.DeleteRequest{Key: k, CheckVersion: rng.IntN(2) == 0, ExpectVersion: uint64(rng.IntN(int(idx)))}}})
				case 1:
					ops = append(ops, &metav1.Command{Op: &metav1.Command_Put{Put: &metav1.PutRequest{Key: k, Value: []byte{byte(i), byte(j)}, CheckVersion: true, ExpectVersion: uint64(rng.IntN(int(idx)))}}})
				default:
					ops = append(ops, &metav1.Command{Op: &metav1.Command_Put{Put: &metav1.PutRequest{Key: k, Value: []byte{byte(i), byte(j)}}}})
				}
			}
			c = &metav1.Command{Op: &metav1.Command_Batch{Batch: &metav1.CommandBatch{Ops: ops}}}
		}
		if c == nil {
			var lease uint64
			if len(leases) > 0 && rng.IntN(3) == 0 {
				lease = leases[rng.IntN(len(leases))]
			}
			c = &metav1.Command{Op: &metav1.Command_Put{Put: &metav1.PutRequest{Key: key, Value: []byte{byte(i)}, Lease: lease}}}
		}
		logs = append(logs, cmdLog(idx, c))
	}
	return logs
}

// model is the naive version of the state machine.
type model struct {
	kvs    map[string]*metav1.KeyValue
	leases map[uint64]bool
	rev    uint64
}

// apply applies one entry and returns its errors: one, or one per op of a
// batch.
func (m *model) apply(l *raft.Log) []error {
	var c metav1.Command
	proto.Unmarshal(l.Data, &c)
	if b := c.GetBatch(); b != nil {
		errs := make([]error, len(b.Ops))
		for i, op := range b.Ops {
			errs[i] = m.applyCmd(l, op)
		}
		return errs
	}
	return []error{m.applyCmd(l, &c)}
}

func (m *model) applyCmd(l *raft.Log, c *metav1.Command) error {
	switch op := c.Op.(type) {
	case *metav1.Command_Put:
		p := op.Put
		old := m.kvs[p.Key]
		if p.CheckVersion && (old == nil && p.ExpectVersion != 0 || old != nil && old.Version != p.ExpectVersion) {
			return ErrVersionMismatch
		}
		if p.Lease != 0 && !m.leases[p.Lease] {
			return ErrLeaseNotFound
		}
		m.rev++
		kv := &metav1.KeyValue{Key: p.Key, Value: p.Value, Version: m.rev, CreateRevision: m.rev, Lease: p.Lease}
		if old != nil {
			kv.CreateRevision = old.CreateRevision
		}
		m.kvs[p.Key] = kv
	case *metav1.Command_Delete:
		d := op.Delete
		old := m.kvs[d.Key]
		if old == nil {
			if d.CheckVersion && d.ExpectVersion != 0 {
				return ErrVersionMismatch
			}
			return ErrNotFound
		}
		if d.CheckVersion && old.Version != d.ExpectVersion {
			return ErrVersionMismatch
		}
		m.rev++
		delete(m.kvs, d.Key)
	case *metav1.Command_LeaseGrant:
		m.leases[l.Index] = true
	case *metav1.Command_LeaseRevoke:
		id := op.LeaseRevoke.Id
		if !m.leases[id] {
			return ErrLeaseNotFound
		}
		delete(m.leases, id)
		for _, k := range sortedKeys(m.kvs) {
			if m.kvs[k].Lease == id {
				m.rev++
				delete(m.kvs, k)
			}
		}
	}
	return nil
}

func sortedKeys(m map[string]*metav1.KeyValue) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return sortedCopy(ks)
}

// dump renders the state of an fsm.
func dump(f *fsm) string {
	kvs, _, rev := f.list("", "", 1<<30)
	var b bytes.Buffer
	fmt.Fprintf(&b, "rev %d\n", rev)
	for _, kv := range kvs {
		fmt.Fprintf(&b, "%s=%x v%d c%d l%d\n", kv.Key, kv.Value, kv.Version, kv.CreateRevision, kv.Lease)
	}
	return b.String()
}

func dumpModel(m *model) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "rev %d\n", m.rev)
	for _, k := range sortedKeys(m.kvs) {
		kv := m.kvs[k]
		fmt.Fprintf(&b, "%s=%x v%d c%d l%d\n", kv.Key, kv.Value, kv.Version, kv.CreateRevision, kv.Lease)
	}
	return b.String()
}

// TestFSMModel checks the state machine against the naive model over random
// command sequences, applied in random batch sizes, with a snapshot and
// restore somewhere in the middle; the watch history holds exactly one
// event per revision.
func TestFSMModel(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 7))
		logs := randomCommands(rng, 300)
		f := newFSM(1<<12, nopHooks{})
		m := &model{kvs: map[string]*metav1.KeyValue{}, leases: map[uint64]bool{}}
		snapAt := rng.IntN(len(logs))
		for i := 0; i < len(logs); {
			n := 1 + rng.IntN(16)
			batch := logs[i:min(i+n, len(logs))]
			res := f.ApplyBatch(batch)
			for j, l := range batch {
				wants := m.apply(l)
				r := res[j].(*applyResult)
				gots := []*applyResult{r}
				if r.batch != nil {
					gots = nil
					for k := range r.batch {
						gots = append(gots, &r.batch[k])
					}
				}
				if len(gots) != len(wants) {
					t.Fatalf("seed %d entry %d: %d results, model %d", seed, l.Index, len(gots), len(wants))
				}
				for k, want := range wants {
					got := gots[k].err
					if (want == nil) != (got == nil) || want != nil && !errors.Is(got, want) {
						t.Fatalf("seed %d entry %d op %d: fsm error %v, model %v", seed, l.Index, k, got, want)
					}
				}
			}
			if i <= snapAt && snapAt < i+n {
				f = snapshotRestore(t, f)
			}
			i += n
		}
		if a, b := dump(f), dumpModel(m); a != b {
			t.Fatalf("seed %d: fsm\n%s\nmodel\n%s", seed, a, b)
		}
	}
}

func snapshotRestore(t *testing.T, f *fsm) *fsm {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := newFSM(1<<12, nopHooks{})
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if a, b := dump(f), dump(g); a != b {
		t.Fatalf("restored state differs:\n%s\nvs\n%s", a, b)
	}
	// Every truncation of the snapshot is rejected (the trailer is
	// missing or a record is cut).
	data := sink.Bytes()
	for _, cut := range []int{0, 1, len(data) / 2, len(data) - 1} {
		h := newFSM(16, nopHooks{})
		if err := h.Restore(io.NopCloser(bytes.NewReader(data[:cut]))); err == nil {
			t.Fatalf("snapshot truncated to %d of %d bytes restored", cut, len(data))
		}
	}
	return g
}

// TestHistory checks the watch history ring: events in order, compaction
// by size and by restore.
func TestHistory(t *testing.T) {
	h := newHistory(8)
	var evs []*metav1.Event
	for r := uint64(1); r <= 20; r++ {
		evs = append(evs, &metav1.Event{Revision: r, Kv: &metav1.KeyValue{Key: fmt.Sprintf("k%d", r%2)}})
	}
	h.append(evs[:5], 5)
	got, upto, _, err := h.read("k1", 1, 100)
	if err != nil || len(got) != 3 || upto != 5 || got[0].Revision != 1 || got[2].Revision != 5 {
		t.Fatalf("read: %v upto %d, %v", got, upto, err)
	}
	h.append(evs[5:], 20)
	if _, _, _, err := h.read("", 12, 100); !errors.Is(err, ErrCompacted) {
		t.Fatalf("read past the ring: %v", err)
	}
	got, upto, _, err = h.read("", 13, 3)
	if err != nil || len(got) != 3 || upto != 15 {
		t.Fatalf("bounded read: %d events upto %d, %v", len(got), upto, err)
	}
	if _, upto, _, err := h.read("", 25, 3); err != nil || upto != 24 {
		t.Fatalf("read from the future: upto %d, %v", upto, err)
	}
	h.reset(30)
	if _, _, _, err := h.read("", 20, 3); !errors.Is(err, ErrCompacted) {
		t.Fatalf("read before a restore: %v", err)
	}
	if _, _, _, err := h.read("", 31, 3); err != nil {
		t.Fatalf("read after a restore: %v", err)
	}
}

// TestLessor: deadlines only matter on a ready leader; promotion gives every
// lease a full TTL, so a new leader never expires a lease early.
func TestLessor(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newLessor(func() time.Time { return now })
	l.granted(1, time.Second)
	l.granted(2, 3*time.Second)
	now = now.Add(10 * time.Second)
	if ids := l.expired(); ids != nil {
		t.Fatalf("a follower expired %v", ids)
	}
	if _, err := l.keepAlive(1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("keep-alive on a follower: %v", err)
	}
	l.promote() // full TTL from now, although both deadlines have passed
	if ids := l.expired(); ids != nil {
		t.Fatalf("expired %v right after promotion", ids)
	}
	now = now.Add(1500 * time.Millisecond)
	if ids := l.expired(); len(ids) != 1 || ids[0] != 1 {
		t.Fatalf("expired %v, want [1]", ids)
	}
	if ids := l.expired(); ids != nil {
		t.Fatalf("expired %v again while pending", ids)
	}
	if ttl, err := l.keepAlive(2); err != nil || ttl != 3*time.Second {
		t.Fatalf("keep-alive: %v, %v", ttl, err)
	}
	now = now.Add(2 * time.Second)
	if ids := l.expired(); ids != nil {
		t.Fatalf("kept-alive lease expired: %v", ids)
	}
	l.unpend(1)
	l.revoked(1)
	if _, err := l.keepAlive(1); !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("keep-alive of a revoked lease: %v", err)
	}
	l.demote()
	now = now.Add(time.Hour)
	if ids := l.expired(); ids != nil {
		t.Fatalf("demoted lessor expired %v", ids)
	}
}

// TestApplyBatchInvalidOp checks proto's fallback for a batch holding an op
// that is neither a put nor a delete: that op fails with ErrInvalid and
// changes nothing, and the writes around it are applied in order.
func TestApplyBatchInvalidOp(t *testing.T) {
	f := newFSM(16, nopHooks{})
	ops := []*metav1.Command{
		{Op: &metav1.Command_Put{Put: &metav1.PutRequest{Key: "a", Value: []byte("1")}}},
		{Op: &metav1.Command_LeaseRevoke{LeaseRevoke: &metav1.LeaseRevokeOp{Id: 1}}},
		{Op: &metav1.Command_Put{Put: &metav1.PutRequest{Key: "b", Value: []byte("2"), CheckVersion: true}}},
	}
	l := cmdLog(7, &metav1.Command{Op: &metav1.Command_Batch{Batch: &metav1.CommandBatch{Ops: ops}}})
	if _, ok := decodeBatch(l.Data); ok {
		t.Fatal("decodeBatch accepted a batch with a lease revoke")
	}
	r := f.Apply(l).(*applyResult)
	if r.err != nil || len(r.batch) != 3 || r.rev != 2 {
		t.Fatalf("result %+v, want 3 op results at revision 2", r)
	}
	if r.batch[0].err != nil || r.batch[0].kv.Version != 1 {
		t.Fatalf("op 0: %+v", r.batch[0])
	}
	if !errors.Is(r.batch[1].err, ErrInvalid) || r.batch[1].rev != 1 || r.batch[1].kv != nil {
		t.Fatalf("op 1: %+v, want ErrInvalid at revision 1", r.batch[1])
	}
	if r.batch[2].err != nil || r.batch[2].kv.Version != 2 {
		t.Fatalf("op 2: %+v", r.batch[2])
	}
	if kv, rev := f.read("b"); kv == nil || string(kv.Value) != "2" || rev != 2 {
		t.Fatalf("b = %v at %d", kv, rev)
	}
}
