package packet

import (
	"errors"
	"io"
	"sync"
)

// DefaultBufferSize is the Reader's and Writer's initial buffer size.
const DefaultBufferSize = 4096

// Reader reads packets from a byte stream, one at a time, through its own
// buffer. It is not safe for concurrent use.
//
// Ownership: the Packet that ReadPacket returns, and every []byte in it
// (Payload, Password, will Payload, Correlation Data, Authentication
// Data), belong to the Reader and are valid only until the next call to
// ReadPacket; the slices in it (Subscriptions, Filters, ReasonCodes,
// UserProperties, SubscriptionIdentifiers) are reused too. Strings are
// ordinary immutable strings and may be kept. To keep a PUBLISH, use
// Publish.Clone.
type Reader struct {
	r           io.Reader
	buf         []byte
	start, end  int // buf[start:end] is read but not yet decoded
	dec         Decoder
	initialSize int
	small       []byte // the initial buffer, kept while buf is a pooled one
	pooled      bool   // buf is from readBufs
	burst       bool   // the last read filled buf
	err         error  // sticky read error
}

// readBufSize is the size of the pooled buffers a Reader reads a burst of
// packets into: once a read fills its small buffer, the next ones get a
// pooled one, given back when all of it is consumed, so that a server
// sees a burst of small packets at once (and can batch the work for
// them) while an idle connection holds only its small buffer.
const readBufSize = 32 << 10

var readBufs = sync.Pool{New: func() any {
	b := make([]byte, readBufSize)
	return &b
}}

// NewReader returns a Reader over r that expects CONNECT first (set the
// version with SetVersion on a client) and accepts packets up to
// maxPacketSize bytes (0 means MaxPacketSize).
func NewReader(r io.Reader, maxPacketSize int) *Reader {
	return NewReaderSize(r, maxPacketSize, DefaultBufferSize)
}

// NewReaderSize is NewReader with an initial buffer of bufferSize bytes
// (at least 16). The buffer grows to hold a larger packet or, when a read
// fills it, a burst of packets; one grown past four times bufferSize is
// dropped (or given back to a pool) once its packets are consumed. It is
// allocated on the first read, so a Reader that has read nothing holds none. A small buffer keeps idle
// connections cheap; a large one saves read calls under load.
func NewReaderSize(r io.Reader, maxPacketSize, bufferSize int) *Reader {
	bufferSize = max(bufferSize, 16)
	return &Reader{r: r, dec: Decoder{MaxPacketSize: maxPacketSize}, initialSize: bufferSize}
}

// SetVersion sets the protocol version the following packets are decoded
// with. A server never needs it: decoding CONNECT sets it.
func (r *Reader) SetVersion(v Version) { r.dec.Version = v }

// Version is the protocol version in force, 0 before CONNECT.
func (r *Reader) Version() Version { return r.dec.Version }

// SetMaxPacketSize changes the largest packet accepted (0 means MaxPacketSize).
func (r *Reader) SetMaxPacketSize(n int) { r.dec.MaxPacketSize = n }

// ReadPacket reads and decodes the next packet. At a clean end of stream
// between packets it returns io.EOF; inside a packet, io.ErrUnexpectedEOF.
// Bad input gives an *Error (see ReasonCodeOf); after any error the stream
// position is undefined and the connection should be closed.
func (r *Reader) ReadPacket() (Packet, error) {
	if r.err != nil {
		return nil, r.err
	}
	r.compact()
	for {
		p, n, err := r.dec.Decode(r.buf[r.start:r.end])
		if err == nil {
			r.start += n
			return p, nil
		}
		if err != ErrIncomplete {
			r.err = err
			return nil, err
		}
		if err := r.fill(); err != nil {
			if err == io.EOF && r.start != r.end {
				err = io.ErrUnexpectedEOF
			}
			r.err = err
			return nil, err
		}
	}
}

// Ready reports whether the next ReadPacket returns without reading:
// a whole packet (or bad input) is buffered. A server flushes its
// answers when it is not, before ReadPacket waits for the peer.
func (r *Reader) Ready() bool {
	if r.err != nil {
		return true
	}
	b := r.buf[r.start:r.end]
	h, hn, err := ParseFixedHeader(b, r.dec.Version)
	if err == ErrIncomplete {
		return false
	}
	return err != nil || hn+h.RemainingLength <= len(b)
}

// compact resets an empty buffer and drops (or gives back) one grown for
// a large packet or a burst once it is no longer needed.
func (r *Reader) compact() {
	if r.start == r.end {
		r.start, r.end = 0, 0
		if r.pooled {
			b := r.buf[:readBufSize]
			readBufs.Put(&b)
			r.buf, r.pooled = nil, false
		} else if cap(r.buf) > 4*r.initialSize {
			r.buf = nil
		}
		return
	}
	// Unread bytes are moved by fill, only when more must be read: moving
	// them on every packet would copy a large buffer once per packet.
}

// fill reads more bytes, growing the buffer to hold the packet being read.
func (r *Reader) fill() error {
	if r.buf == nil {
		if r.small == nil {
			r.small = make([]byte, r.initialSize)
		}
		r.buf = r.small
	}
	if r.start > 0 {
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
	}
	// A read that filled the buffer means a burst: read the rest of it
	// into a pooled buffer.
	if r.end == len(r.buf) || r.burst && !r.pooled && len(r.buf) < readBufSize {
		need := len(r.buf) * 2
		if h, hn, err := ParseFixedHeader(r.buf[:r.end], r.dec.Version); err == nil && hn+h.RemainingLength > need {
			need = hn + h.RemainingLength
		}
		var nb []byte
		pooled := need <= readBufSize && len(r.buf) < readBufSize
		if pooled {
			nb = *readBufs.Get().(*[]byte)
		} else {
			nb = make([]byte, need)
		}
		copy(nb, r.buf[:r.end])
		if r.pooled {
			b := r.buf[:readBufSize]
			readBufs.Put(&b)
		}
		r.buf, r.pooled = nb, pooled
	}
	for range 100 {
		n, err := r.r.Read(r.buf[r.end:])
		r.end += n
		r.burst = r.end == len(r.buf)
		if n > 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return io.ErrNoProgress
}

// Writer encodes packets into a buffer and writes them to an io.Writer on
// Flush, or when the buffer holds FlushSize bytes: a batch of packets
// goes out in one write. The buffer comes from a pool on the first
// WritePacket and goes back to it on Flush, so an idle Writer holds none.
// It is not safe for concurrent use.
type Writer struct {
	w   io.Writer
	buf *[]byte // nil when nothing is buffered
	v   Version
	max int // peer's Maximum Packet Size, 0 for none
}

// FlushSize is the number of buffered bytes at which WritePacket writes
// the buffer out before encoding the next packet.
const FlushSize = 64 << 10

// writeBufs holds the Writers' buffers; one grown past maxPooled by a
// large packet is not kept.
var writeBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, DefaultBufferSize)
	return &b
}}

const maxPooled = 2 * FlushSize

// NewWriter returns a Writer that encodes for version v.
func NewWriter(w io.Writer, v Version) *Writer {
	return &Writer{w: w, v: v}
}

// SetVersion sets the version packets are encoded with.
func (w *Writer) SetVersion(v Version) { w.v = v }

// SetMaxPacketSize sets the largest packet the peer accepts (its Maximum
// Packet Size property, MQTT 5.0 §3.1.2.11.4, §3.2.2.3.6); 0 means no limit.
func (w *Writer) SetMaxPacketSize(n int) { w.max = n }

// ErrPeerPacketTooLarge is returned by Writer.WritePacket when the encoded
// packet exceeds the peer's Maximum Packet Size. Nothing is written: the
// sender must drop the message (MQTT 5.0 §3.1.2.11.4 [MQTT-3.1.2-25]) or
// send it without Reason String and User Properties.
var ErrPeerPacketTooLarge = errors.New("mqtt: packet exceeds the peer's maximum packet size")

// WritePacket encodes p into the buffer, writing the buffer out first if it
// holds FlushSize bytes or more.
func (w *Writer) WritePacket(p Packet) error {
	if w.Buffered() >= FlushSize {
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if w.buf == nil {
		w.buf = writeBufs.Get().(*[]byte)
	}
	n := len(*w.buf)
	b, err := p.Append(*w.buf, w.v)
	if err != nil {
		w.release()
		return err
	}
	if w.max > 0 && len(b)-n > w.max {
		*w.buf = b[:n]
		w.release()
		return ErrPeerPacketTooLarge
	}
	*w.buf = b
	return nil
}

// Buffered is the number of bytes waiting for Flush.
func (w *Writer) Buffered() int {
	if w.buf == nil {
		return 0
	}
	return len(*w.buf)
}

// Flush writes the buffered packets.
func (w *Writer) Flush() error {
	if w.Buffered() == 0 {
		return nil
	}
	_, err := w.w.Write(*w.buf)
	*w.buf = (*w.buf)[:0]
	w.release()
	return err
}

// release gives an empty buffer back to the pool.
func (w *Writer) release() {
	if w.buf == nil || len(*w.buf) > 0 {
		return
	}
	if cap(*w.buf) <= maxPooled {
		writeBufs.Put(w.buf)
	}
	w.buf = nil
}
