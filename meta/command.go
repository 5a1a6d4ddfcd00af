package meta

import (
	"encoding/binary"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	metav1 "github.com/quiremq/quire/internal/proto/meta/v1"
)

// writeOp is a put or a delete as the state machine applies it.
type writeOp struct {
	del    bool
	key    string
	value  []byte
	lease  uint64
	check  bool
	expect uint64
	// invalid marks an op of a batch that is neither a put nor a delete
	// (only proto's fallback decodes one): it is not applied, and fails.
	invalid bool
}

func putWrite(p *metav1.PutRequest) writeOp {
	return writeOp{key: p.GetKey(), value: p.GetValue(), lease: p.GetLease(), check: p.GetCheckVersion(), expect: p.GetExpectVersion()}
}

func deleteWrite(d *metav1.DeleteRequest) writeOp {
	return writeOp{del: true, key: d.Key, check: d.CheckVersion, expect: d.ExpectVersion}
}

// batchWrite is the write of a BatchOp that is a put or a delete.
func batchWrite(op *metav1.BatchOp) writeOp {
	if d := op.GetDelete(); d != nil {
		return deleteWrite(d)
	}
	return putWrite(op.GetPut())
}

// Field numbers of the messages decodeBatch reads (store.proto, meta.proto).
const (
	fieldCommandPut    = 1
	fieldCommandDelete = 2
	fieldCommandBatch  = 5
	fieldBatchOps      = 1
)

// decodeBatch decodes a Command that holds a CommandBatch of puts and
// deletes, as proto.Marshal writes it, without the protobuf runtime's
// allocations of a message (and a oneof wrapper) per op: every replica
// decodes every write entry. It returns ok == false for anything else —
// another command, an unknown or repeated field, a key that is not UTF-8 —
// and the caller then decodes with proto.Unmarshal; an entry decodeBatch
// accepts decodes to the same ops with either.
func decodeBatch(data []byte) (ops []writeOp, ok bool) {
	num, body, rest, ok := nextBytesField(data)
	if !ok || num != fieldCommandBatch || len(rest) != 0 {
		return nil, false
	}
	// Count the ops first: one allocation for all of them.
	n := 0
	for b := body; len(b) > 0; n++ {
		num, _, r, ok := nextBytesField(b)
		if !ok || num != fieldBatchOps {
			return nil, false
		}
		b = r
	}
	ops = make([]writeOp, n)
	for i := range ops {
		_, cmd, r, _ := nextBytesField(body)
		body = r
		num, msg, cr, ok := nextBytesField(cmd)
		if !ok || len(cr) != 0 {
			return nil, false
		}
		switch num {
		case fieldCommandPut:
			ok = decodeWrite(msg, &ops[i])
		case fieldCommandDelete:
			ops[i].del = true
			ok = decodeWrite(msg, &ops[i])
		default:
			ok = false
		}
		if !ok {
			return nil, false
		}
	}
	return ops, true
}

// nextBytesField reads one length-delimited field.
func nextBytesField(b []byte) (num protowire.Number, val, rest []byte, ok bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || typ != protowire.BytesType {
		return 0, nil, nil, false
	}
	val, m := protowire.ConsumeBytes(b[n:])
	if m < 0 {
		return 0, nil, nil, false
	}
	return num, val, b[n+m:], true
}

// fieldReader reads the fields of one message, each at most once.
type fieldReader struct {
	b    []byte
	seen uint32
	bad  bool
}

// next returns the next field's number and type, or false at the end or on
// a malformed or repeated field (bad is then set).
func (r *fieldReader) next() (protowire.Number, protowire.Type, bool) {
	if len(r.b) == 0 {
		return 0, 0, false
	}
	num, typ, n := protowire.ConsumeTag(r.b)
	if n < 0 || num >= 32 || r.seen&(1<<num) != 0 {
		r.bad = true
		return 0, 0, false
	}
	r.seen |= 1 << num
	r.b = r.b[n:]
	return num, typ, true
}

func (r *fieldReader) bytes(typ protowire.Type) []byte {
	if typ != protowire.BytesType {
		r.bad = true
		return nil
	}
	v, n := protowire.ConsumeBytes(r.b)
	if n < 0 {
		r.bad = true
		return nil
	}
	r.b = r.b[n:]
	return v
}

func (r *fieldReader) varint(typ protowire.Type) uint64 {
	if typ != protowire.VarintType {
		r.bad = true
		return 0
	}
	v, n := protowire.ConsumeVarint(r.b)
	if n < 0 {
		r.bad = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

// key reads a string field; proto.Unmarshal rejects one that is not UTF-8.
func (r *fieldReader) key(typ protowire.Type) string {
	v := r.bytes(typ)
	if !utf8.Valid(v) {
		r.bad = true
	}
	return string(v)
}

// decodeWrite reads a PutRequest (key 1, value 2, lease 3, check_version
// 4, expect_version 5) or, when op.del is set, a DeleteRequest (key 1,
// check_version 2, expect_version 3). A value is copied: the entry's buffer
// is not kept.
func decodeWrite(b []byte, op *writeOp) bool {
	r := fieldReader{b: b}
	for !r.bad {
		num, typ, ok := r.next()
		if !ok {
			break
		}
		if op.del && num > 1 {
			num += 2 // check_version and expect_version, numbered as in PutRequest
		}
		switch num {
		case 1:
			op.key = r.key(typ)
		case 2:
			v := r.bytes(typ)
			op.value = append(make([]byte, 0, len(v)), v...)
		case 3:
			op.lease = r.varint(typ)
		case 4:
			op.check = protowire.DecodeBool(r.varint(typ))
		case 5:
			op.expect = r.varint(typ)
		default:
			r.bad = true
		}
	}
	return !r.bad
}

// encodeBatch encodes the writes as one Command holding a CommandBatch, as
// proto.Marshal would (fields in order, zero values left out), in one
// allocation (usually: its size is estimated from the writes' opSize) and
// one pass that unpacks and sizes each write once. The ops go first, after
// room for the Command's tag and the batch's length, which are written in
// front of them once the length is known.
func encodeBatch(batch []*pendingWrite) []byte {
	const head = 1 + binary.MaxVarintLen32 // tag and length of the batch (an entry is < 4 GiB)
	size := head
	for _, w := range batch {
		size += w.size + 16
	}
	b := make([]byte, head, size)
	for _, w := range batch {
		op := batchWrite(w.op)
		n := op.encodedSize()
		b = protowire.AppendTag(b, fieldBatchOps, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(1+protowire.SizeBytes(n)))
		b = appendWrite(b, &op, n)
	}
	inner := uint64(len(b) - head)
	start := head - 1 - protowire.SizeVarint(inner)
	protowire.AppendVarint(protowire.AppendTag(b[start:start], fieldCommandBatch, protowire.BytesType), inner)
	return b[start:]
}

// encodedSize is the encoded size of the op's PutRequest or DeleteRequest.
func (op *writeOp) encodedSize() int {
	n := 0
	if op.key != "" {
		n += 1 + protowire.SizeBytes(len(op.key))
	}
	if len(op.value) > 0 {
		n += 1 + protowire.SizeBytes(len(op.value))
	}
	if op.lease != 0 {
		n += 1 + protowire.SizeVarint(op.lease)
	}
	if op.check {
		n += 2
	}
	if op.expect != 0 {
		n += 1 + protowire.SizeVarint(op.expect)
	}
	return n
}

// appendWrite appends the op as a Command (put 1 or delete 2) whose
// request encodes to size bytes (op.encodedSize()). A delete has no value
// or lease; its check_version and expect_version are fields 2 and 3.
func appendWrite(b []byte, op *writeOp, size int) []byte {
	num, checkNum, expectNum := protowire.Number(fieldCommandPut), protowire.Number(4), protowire.Number(5)
	if op.del {
		num, checkNum, expectNum = fieldCommandDelete, 2, 3
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(size))
	if op.key != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, op.key)
	}
	if len(op.value) > 0 {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, op.value)
	}
	if op.lease != 0 {
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, op.lease)
	}
	if op.check {
		b = protowire.AppendTag(b, checkNum, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	if op.expect != 0 {
		b = protowire.AppendTag(b, expectNum, protowire.VarintType)
		b = protowire.AppendVarint(b, op.expect)
	}
	return b
}
