package file

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/vfs"
)

// SyncPolicy says when appended records are made durable.
type SyncPolicy string

const (
	// SyncBatch acknowledges an append only after the fdatasync that covers
	// it. Concurrent appends share one write and one fdatasync (group commit).
	SyncBatch SyncPolicy = "batch"
	// SyncInterval acknowledges an append once it is written (to the OS page
	// cache) and fdatasyncs within Options.SyncInterval of the first
	// unsynced write. A crash of the machine loses at most that much
	// acknowledged data; a crash of the process alone loses nothing.
	SyncInterval SyncPolicy = "interval"
	// SyncNone acknowledges after the write and fdatasyncs only when a segment
	// is rolled, before a seal and on Close.
	SyncNone SyncPolicy = "none"
)

// Defaults applied by EnsureDefaults.
const (
	DefaultSyncInterval       = 100 * time.Millisecond
	DefaultSegmentBytes       = 128 << 20
	DefaultSegmentAge         = 7 * 24 * time.Hour
	DefaultIndexIntervalBytes = 4096
	// DefaultMaxOpenSegments bounds the sealed-segment read handles an
	// engine caches (in addition to one append handle per open shard).
	DefaultMaxOpenSegments = 256
)

// minSegmentBytes is the smallest SegmentBytes Validate accepts (tests use
// tiny segments to roll often).
const minSegmentBytes = 1024

// Options configure an Engine. The zero value plus Dir is a valid
// configuration after EnsureDefaults.
type Options struct {
	// FS is the file system holding the data; default vfs.Default.
	FS vfs.FS
	// Dir is the engine's directory (required). Each shard gets one
	// sub-directory.
	Dir string
	// Sync is the durability policy; default SyncBatch.
	Sync SyncPolicy
	// SyncInterval bounds how long the SyncInterval policy leaves written
	// data unsynced; default 100ms.
	SyncInterval time.Duration
	// SegmentBytes rolls the active segment before an append once it holds
	// this many bytes; default 128 MiB. A segment exceeds it by at most one
	// group commit.
	SegmentBytes int64
	// SegmentAge rolls the active segment before an append once it is this
	// old (since its creation, persisted in its header); default 7 days,
	// so that RetentionAge can reclaim shards with little traffic. A negative
	// value never rolls by age. An idle segment is rolled by the next append,
	// not by a timer.
	SegmentAge time.Duration
	// RetentionBytes bounds a shard's size: the oldest sealed segments are
	// deleted as long as the remaining segments still hold at least
	// RetentionBytes (Kafka's retention.bytes). 0 keeps everything.
	RetentionBytes int64
	// RetentionAge deletes the oldest sealed segments whose newest record
	// (largest timestamp) is older than this. 0 keeps everything.
	// Retention runs after every roll and once a minute.
	RetentionAge time.Duration
	// IndexIntervalBytes is the distance in bytes between sparse index
	// entries; default 4096.
	IndexIntervalBytes int
	// MaxOpenSegments bounds the cached read handles of sealed segments
	// across all shards; default 256. The engine holds at most one more
	// file descriptor per open shard (its active segment).
	MaxOpenSegments int
	// VerifySealedOnOpen scans and checks every record of every sealed
	// segment when a shard is opened, so that a corrupt sealed segment fails
	// the open. By default only the active segment is scanned (and sealed
	// segments whose index is missing or damaged); corruption in a sealed
	// segment is then reported by the Read that meets it. Opening reads all
	// of a shard's data when this is set.
	VerifySealedOnOpen bool
	// Registerer receives the engine's metrics (quire_file_*); nil registers
	// nothing.
	Registerer prometheus.Registerer
	// Logger receives recovery, corruption and retention events; default
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock for default timestamps, segment age and retention
	// age; default time.Now. Tests inject a fake clock.
	Now func() time.Time
	// Offload moves sealed segments to an object store and reads them from
	// there once their local copy is deleted; nil keeps everything local.
	Offload *OffloadOptions

	// offloadHook, set by tests, runs after each step of a segment's
	// offload.
	offloadHook func(step offloadStep, shard string, base uint64)
	// offloadManual, set by tests, runs no background passes: the test
	// calls Engine.off.pass.
	offloadManual bool
}

// EnsureDefaults fills zero fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.Sync == "" {
		o.Sync = SyncBatch
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.SegmentBytes == 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	if o.SegmentAge == 0 {
		o.SegmentAge = DefaultSegmentAge
	}
	if o.IndexIntervalBytes == 0 {
		o.IndexIntervalBytes = DefaultIndexIntervalBytes
	}
	if o.MaxOpenSegments == 0 {
		o.MaxOpenSegments = DefaultMaxOpenSegments
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Offload != nil {
		oo := *o.Offload
		oo.ensureDefaults(o.FS, o.Dir)
		o.Offload = &oo
	}
}

// Validate checks the options (call EnsureDefaults first).
func (o *Options) Validate() error {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("file: Dir is required"))
	}
	if o.FS == nil {
		errs = append(errs, errors.New("file: FS is nil"))
	}
	switch o.Sync {
	case SyncBatch, SyncInterval, SyncNone:
	default:
		errs = append(errs, fmt.Errorf("file: Sync must be %q, %q or %q, got %q", SyncBatch, SyncInterval, SyncNone, o.Sync))
	}
	if o.SyncInterval <= 0 {
		errs = append(errs, fmt.Errorf("file: SyncInterval must be positive, got %v", o.SyncInterval))
	}
	if o.SegmentBytes < minSegmentBytes {
		errs = append(errs, fmt.Errorf("file: SegmentBytes must be at least %d, got %d", minSegmentBytes, o.SegmentBytes))
	}
	if o.RetentionBytes < 0 {
		errs = append(errs, fmt.Errorf("file: RetentionBytes must not be negative, got %d", o.RetentionBytes))
	}
	if o.RetentionAge < 0 {
		errs = append(errs, fmt.Errorf("file: RetentionAge must not be negative, got %v", o.RetentionAge))
	}
	if o.IndexIntervalBytes <= 0 {
		errs = append(errs, fmt.Errorf("file: IndexIntervalBytes must be positive, got %d", o.IndexIntervalBytes))
	}
	if o.MaxOpenSegments <= 0 {
		errs = append(errs, fmt.Errorf("file: MaxOpenSegments must be positive, got %d", o.MaxOpenSegments))
	}
	if o.Offload != nil {
		errs = append(errs, o.Offload.validate())
	}
	return errors.Join(errs...)
}
