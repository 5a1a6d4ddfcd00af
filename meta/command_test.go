package meta

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// protoBatch decodes data with proto.Unmarshal into writeOps, as the state
// machine's fallback does; ok is false when it is not a batch of puts and
// deletes.
func protoBatch(data []byte) ([]writeOp, bool) {
	var c metav1.Command
	if proto.Unmarshal(data, &c) != nil || c.GetBatch() == nil {
		return nil, false
	}
	ops := make([]writeOp, 0, len(c.GetBatch().Ops))
	for _, o := range c.GetBatch().Ops {
		switch x := o.Op.(type) {
		case *metav1.Command_Put:
			ops = append(ops, putWrite(x.Put))
		case *metav1.Command_Delete:
			ops = append(ops, deleteWrite(x.Delete))
		default:
			return nil, false
		}
	}
	return ops, true
}

// sameOps compares ops, treating a nil and an empty value alike (proto
// gives either, and both marshal and read back the same).
func sameOps(a, b []writeOp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if len(x.value) == 0 && len(y.value) == 0 {
			x.value, y.value = nil, nil
		}
		if !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}

// TestDecodeBatch checks decodeBatch against proto.Unmarshal: every batch
// proto.Marshal writes takes the fast path and decodes to the same ops, and
// on corrupted or non-canonical encodings the fast path either declines or
// agrees with proto.
func TestDecodeBatch(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	declined := 0
	for iter := range 2000 {
		var ops []*metav1.Command
		for j := range rng.IntN(8) {
			key := fmt.Sprintf("k/%d/é", rng.IntN(1000))
			if rng.IntN(10) == 0 {
				key = ""
			}
			if rng.IntN(3) == 0 {
				ops = append(ops, &metav1.Command{Op: &metav1.Command_Delete{Delete: &metav1.DeleteRequest{
					Key: key, CheckVersion: rng.IntN(2) == 0, ExpectVersion: rng.Uint64N(1 << 40)}}})
				continue
			}
			val := make([]byte, rng.IntN(40))
			for k := range val {
				val[k] = byte(rng.IntN(256))
			}
			ops = append(ops, &metav1.Command{Op: &metav1.Command_Put{Put: &metav1.PutRequest{
				Key: key, Value: val, Lease: rng.Uint64N(3) * uint64(j+1), CheckVersion: rng.IntN(2) == 0, ExpectVersion: rng.Uint64N(1 << 40)}}})
		}
		data, err := proto.Marshal(&metav1.Command{Op: &metav1.Command_Batch{Batch: &metav1.CommandBatch{Ops: ops}}})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := protoBatch(data)
		got, ok := decodeBatch(data)
		if !ok || !sameOps(got, want) {
			t.Fatalf("iter %d: canonical batch: fast path ok=%v ops %+v, proto %+v", iter, ok, got, want)
		}
		// Corruptions: a flipped byte, a cut, a field appended (unknown,
		// or a second batch field, which proto would merge).
		mut := append([]byte(nil), data...)
		switch rng.IntN(3) {
		case 0:
			if len(mut) > 0 {
				mut[rng.IntN(len(mut))] ^= byte(1 + rng.IntN(255))
			}
		case 1:
			mut = mut[:rng.IntN(len(mut)+1)]
		default:
			mut = append(mut, data...)
		}
		got, ok = decodeBatch(mut)
		if !ok {
			declined++
			continue
		}
		want, pok := protoBatch(mut)
		if !pok || !sameOps(got, want) {
			t.Fatalf("iter %d: corrupted batch %x: fast path %+v, proto ok=%v %+v", iter, mut, got, pok, want)
		}
	}
	if declined == 0 {
		t.Fatal("no corrupted batch was declined by the fast path")
	}
	// Commands other than a batch take proto's path.
	for _, c := range []*metav1.Command{
		{Op: &metav1.Command_Put{Put: &metav1.PutRequest{Key: "k"}}},
		{Op: &metav1.Command_LeaseGrant{LeaseGrant: &metav1.LeaseGrantOp{TtlMs: 1000}}},
		{Op: &metav1.Command_Batch{Batch: &metav1.CommandBatch{Ops: []*metav1.Command{{Op: &metav1.Command_LeaseRevoke{LeaseRevoke: &metav1.LeaseRevokeOp{Id: 1}}}}}}},
	} {
		data, _ := proto.Marshal(c)
		if _, ok := decodeBatch(data); ok {
			t.Fatalf("decodeBatch accepted %v", c)
		}
	}
}

// TestEncodeBatch checks that the leader's encoding of a write batch is
// byte for byte what proto.Marshal writes for the same Command, and that
// it decodes back to the same ops on the fast path.
func TestEncodeBatch(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for iter := range 1000 {
		g := newWriteGroup(0)
		var cmds []*metav1.Command
		for range 1 + rng.IntN(6) {
			key := fmt.Sprintf("k/%d", rng.IntN(1<<20))
			if rng.IntN(10) == 0 {
				key = ""
			}
			var op *metav1.BatchOp
			if rng.IntN(3) == 0 {
				d := &metav1.DeleteRequest{Key: key, CheckVersion: rng.IntN(2) == 0, ExpectVersion: rng.Uint64N(3) << rng.IntN(60)}
				op = &metav1.BatchOp{Op: &metav1.BatchOp_Delete{Delete: d}}
				cmds = append(cmds, &metav1.Command{Op: &metav1.Command_Delete{Delete: d}})
			} else {
				p := &metav1.PutRequest{Key: key, Value: make([]byte, rng.IntN(300)), Lease: rng.Uint64N(3) << rng.IntN(60),
					CheckVersion: rng.IntN(2) == 0, ExpectVersion: rng.Uint64N(3) << rng.IntN(60)}
				op = &metav1.BatchOp{Op: &metav1.BatchOp_Put{Put: p}}
				cmds = append(cmds, &metav1.Command{Op: &metav1.Command_Put{Put: p}})
			}
			g.add(op)
		}
		batch := make([]*pendingWrite, len(g.writes))
		for i := range g.writes {
			batch[i] = &g.writes[i]
		}
		got := encodeBatch(batch)
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&metav1.Command{Op: &metav1.Command_Batch{Batch: &metav1.CommandBatch{Ops: cmds}}})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("iter %d: encodeBatch\n%x\nproto.Marshal\n%x", iter, got, want)
		}
		if _, ok := decodeBatch(got); !ok {
			t.Fatalf("iter %d: fast path declined the leader's encoding", iter)
		}
	}
}
