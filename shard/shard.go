package shard

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Header is one record header (Kafka record headers, MQTT 5 user properties,
// AMQP message properties).
type Header struct {
	Key   string
	Value []byte
}

// Record is the unit stored in a shard.
type Record struct {
	// Offset is assigned by the shard on append; it is ignored in the input of
	// Append and set in the output of Read.
	Offset uint64
	// Timestamp is in milliseconds since the Unix epoch. Append sets a zero
	// timestamp to the current time.
	Timestamp int64
	Key       []byte
	Value     []byte
	Headers   []Header
}

// Size is the number of payload bytes of r (key, value and headers), the
// unit Limits.MaxBytes counts in.
func (r *Record) Size() int {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// Limits bound one Read. A zero field means "no limit". Read always returns
// at least one record when one exists at the requested offset, even if that
// record alone exceeds MaxBytes (otherwise a large record could never be read).
type Limits struct {
	MaxRecords int
	MaxBytes   int
}

// Shard is one append-only record log. All methods are safe for concurrent use.
type Shard interface {
	// Name returns the shard's name as given to Engine.Create.
	Name() string
	// Append appends recs and returns the offset of the first one. An empty
	// batch appends nothing and returns the high watermark.
	Append(ctx context.Context, recs []Record) (first uint64, err error)
	// Read returns records from offset from, in order, within lim. The
	// returned records may share memory with the engine: callers must not
	// modify them.
	Read(ctx context.Context, from uint64, lim Limits) ([]Record, error)
	// Watermarks returns the first readable offset and the next offset to be
	// assigned.
	Watermarks() (low, high uint64)
	// OffsetForTime returns the first offset whose record has a timestamp >= ts
	// (in milliseconds), or the high watermark when there is none.
	OffsetForTime(ctx context.Context, ts int64) (uint64, error)
	// Trim discards every record below before; afterwards low == before.
	// Trimming below low is a no-op; trimming above high is ErrOffsetOutOfRange.
	Trim(ctx context.Context, before uint64) error
	// Seal makes the shard read-only. Sealing is permanent and idempotent.
	Seal(ctx context.Context) error
	// Sealed reports whether the shard is sealed.
	Sealed() bool
	// Close flushes and releases the shard. Later calls fail with ErrClosed.
	Close() error
}

// Engine stores shards. All methods are safe for concurrent use.
type Engine interface {
	// Name is the engine's name in configuration ("memory", "file", ...).
	Name() string
	// Create makes a new, empty shard. It fails with ErrExists if name exists.
	Create(ctx context.Context, name string) (Shard, error)
	// Open opens an existing shard. It fails with ErrNotFound if there is none.
	// Opening a shard that is already open returns the same shard.
	Open(ctx context.Context, name string) (Shard, error)
	// Delete removes a shard and its data. It fails with ErrNotFound if there is
	// none. An open handle to a deleted shard fails with ErrClosed.
	Delete(ctx context.Context, name string) error
	// List returns the names of all shards, sorted.
	List(ctx context.Context) ([]string, error)
	// Close flushes and closes every shard of the engine.
	Close() error
}

// Tailer is implemented by shards that can wake readers when records arrive.
type Tailer interface {
	// Wait returns a channel that is closed once the high watermark exceeds
	// offset, or the shard is closed, sealed or deleted.
	Wait(offset uint64) <-chan struct{}
}

// Settings are per-shard engine settings by name, as a topic's rule or
// record carries them (the journal engine's "ensemble", "write_quorum",
// "ack_quorum"). An engine ignores names it does not know.
type Settings map[string]string

// SettingsCreator is implemented by engines whose shards take settings at
// creation. The engine persists them with the shard, so that Open uses
// them again; Create uses the engine's defaults.
type SettingsCreator interface {
	CreateWith(ctx context.Context, name string, s Settings) (Shard, error)
}

// Errors returned by engines. Test with errors.Is: engines wrap them with
// detail.
var (
	// ErrNotFound is returned when a shard does not exist.
	ErrNotFound = errors.New("shard: not found")
	// ErrExists is returned by Create when the shard already exists.
	ErrExists = errors.New("shard: already exists")
	// ErrSealed is returned by Append on a sealed shard.
	ErrSealed = errors.New("shard: sealed")
	// ErrClosed is returned by any call on a closed or deleted shard or engine.
	ErrClosed = errors.New("shard: closed")
	// ErrOffsetOutOfRange is returned by Read outside [low, high] and by Trim
	// above high.
	ErrOffsetOutOfRange = errors.New("shard: offset out of range")
	// ErrCorrupt marks data that fails its checksum where no crash can explain
	// it (not a torn tail). The shard refuses to open; other shards are served.
	ErrCorrupt = errors.New("shard: corrupt data")
	// ErrInvalidName is returned for a shard name an engine cannot store.
	ErrInvalidName = errors.New("shard: invalid name")
	// ErrFailed is returned by every write after an unrecoverable I/O error
	// (a failed fsync leaves the file's state unknown); reopen the shard.
	ErrFailed = errors.New("shard: failed after I/O error")
)

// OutOfRangeError says where the readable range was when a read missed it.
type OutOfRangeError struct {
	Offset    uint64
	Low, High uint64
}

func (e *OutOfRangeError) Error() string {
	return fmt.Sprintf("shard: offset %d out of range [%d, %d]", e.Offset, e.Low, e.High)
}

// Unwrap makes errors.Is(err, ErrOffsetOutOfRange) true.
func (e *OutOfRangeError) Unwrap() error { return ErrOffsetOutOfRange }

// CorruptError locates corrupt data.
type CorruptError struct {
	Shard  string
	File   string
	Offset int64 // byte offset within File
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("shard %q: corrupt data in %s at byte %d: %s", e.Shard, e.File, e.Offset, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// ValidateName checks a shard name: 1 to 1024 bytes of valid UTF-8 without NUL.
// Engines encode names as they need (for example as file names).
func ValidateName(name string) error {
	if name == "" || len(name) > 1024 {
		return fmt.Errorf("%w: %q must be 1 to 1024 bytes", ErrInvalidName, name)
	}
	if !utf8.ValidString(name) || strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("%w: %q contains NUL or invalid UTF-8", ErrInvalidName, name)
	}
	return nil
}
