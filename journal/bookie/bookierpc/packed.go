package bookierpc

import (
	"encoding/binary"
	"errors"
	"math"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
)

// The packed wire format of AddRequest.packed and AddResponse.packed (the
// layout is documented in bookie.proto): fixed little-endian headers, so
// both sides encode and decode many adds and answers with no message and
// no allocation per add.

// packedAddHeader is the size of a packed add before its payload: ledger,
// entry, lac, crc32c, flags, length.
const packedAddHeader = 8 + 8 + 8 + 4 + 1 + 4

// packedAnswerSize is the size of a packed answer without a message: seq,
// ledger, entry, status.
const packedAnswerSize = 8 + 8 + 8 + 1

const flagRecovery = 1

var errBadPacked = errors.New("bookierpc: malformed packed adds")

// appendPackedAdd appends a in the packed layout with the given crc32c.
func appendPackedAdd(buf []byte, a *Add, crc uint32) []byte {
	var flags byte
	if a.Recovery {
		flags = flagRecovery
	}
	buf = binary.LittleEndian.AppendUint64(buf, a.Ledger)
	buf = binary.LittleEndian.AppendUint64(buf, a.Entry)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(a.LAC))
	buf = binary.LittleEndian.AppendUint32(buf, crc)
	buf = append(buf, flags)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(a.Payload)))
	return append(buf, a.Payload...)
}

// packedAdd is one add decoded from a packed request; payload aliases the
// request's bytes.
type packedAdd struct {
	ledger, entry uint64
	lac           int64
	crc           uint32
	recovery      bool
	payload       []byte
}

// nextPackedAdd decodes the first add of b and returns the rest of b.
func nextPackedAdd(b []byte) (packedAdd, []byte, error) {
	if len(b) < packedAddHeader {
		return packedAdd{}, nil, errBadPacked
	}
	flags := b[28]
	n := binary.LittleEndian.Uint32(b[29:])
	if flags&^flagRecovery != 0 || uint64(n) > uint64(len(b)-packedAddHeader) {
		return packedAdd{}, nil, errBadPacked
	}
	end := packedAddHeader + int(n)
	return packedAdd{
		ledger:   binary.LittleEndian.Uint64(b),
		entry:    binary.LittleEndian.Uint64(b[8:]),
		lac:      int64(binary.LittleEndian.Uint64(b[16:])),
		crc:      binary.LittleEndian.Uint32(b[24:]),
		recovery: flags&flagRecovery != 0,
		payload:  b[packedAddHeader:end:end],
	}, b[end:], nil
}

// appendPackedAnswer appends one answer in the packed layout; msg is sent
// only when st is not OK (cut to 64 KiB - 1 bytes).
func appendPackedAnswer(buf []byte, seq, ledger, entry uint64, st journalv1.Status, msg string) []byte {
	buf = binary.LittleEndian.AppendUint64(buf, seq)
	buf = binary.LittleEndian.AppendUint64(buf, ledger)
	buf = binary.LittleEndian.AppendUint64(buf, entry)
	buf = append(buf, byte(st))
	if st == journalv1.Status_STATUS_OK {
		return buf
	}
	msg = msg[:min(len(msg), math.MaxUint16)]
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(msg)))
	return append(buf, msg...)
}

// packedAnswer is one answer decoded from a packed response.
type packedAnswer struct {
	seq, ledger, entry uint64
	status             journalv1.Status
	msg                string
}

// nextPackedAnswer decodes the first answer of b and returns the rest of b.
func nextPackedAnswer(b []byte) (packedAnswer, []byte, error) {
	if len(b) < packedAnswerSize {
		return packedAnswer{}, nil, errBadPacked
	}
	a := packedAnswer{
		seq:    binary.LittleEndian.Uint64(b),
		ledger: binary.LittleEndian.Uint64(b[8:]),
		entry:  binary.LittleEndian.Uint64(b[16:]),
		status: journalv1.Status(b[24]),
	}
	b = b[packedAnswerSize:]
	if a.status == journalv1.Status_STATUS_OK {
		return a, b, nil
	}
	if len(b) < 2 {
		return packedAnswer{}, nil, errBadPacked
	}
	n := int(binary.LittleEndian.Uint16(b))
	if len(b)-2 < n {
		return packedAnswer{}, nil, errBadPacked
	}
	a.msg = string(b[2 : 2+n])
	return a, b[2+n:], nil
}
