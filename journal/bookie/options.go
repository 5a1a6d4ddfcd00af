package bookie

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quiremq/quire/internal/vfs"
)

// Options configure a bookie. Zero fields take the defaults documented on
// each field (EnsureDefaults); Validate reports what cannot be defaulted.
type Options struct {
	// FS holds every file of the bookie: journal, entry logs, the Pebble
	// index and the cookies. Default vfs.Default (the real disk).
	FS vfs.FS
	// Dir is the data directory: cookie, entry logs (ledgers/) and the
	// index (index/). Required.
	Dir string
	// JournalDir holds the journal files and its own cookie; put it on a
	// separate device to keep journal syncs off the entry-log traffic.
	// Default Dir/journal.
	JournalDir string
	// BookieID names this bookie in the cluster (its advertised address or
	// a stable id). Required: it is written into the cookies.
	BookieID string
	// Cookies is the registry that remembers this bookie's cookie outside
	// its disks (meta, or a local file until meta exists). Required.
	Cookies CookieStore

	// MaxGroupWait is how long the oldest record of a group may wait before
	// the group is written and fdatasync'ed while a sync runs; with the
	// syncer idle a group goes at once. Default 2ms.
	MaxGroupWait time.Duration
	// IdleGroupWait is how long the oldest record of a group waits, with
	// the syncer idle, before the group goes (at most MaxGroupWait): at a
	// moderate rate a group that goes at once holds a few adds, and each
	// fdatasync, and the answers it releases, cost about the same CPU
	// and disk time however few adds it covers. Default 0: at once.
	IdleGroupWait time.Duration
	// MaxGroupBytes writes and syncs a group once it holds this many bytes,
	// whichever of the two limits comes first. Default 512 KiB.
	MaxGroupBytes int
	// JournalFileSize is the size journal files are preallocated and
	// zero-filled to (a file rolls over when the next group does not fit).
	// Default 64 MiB.
	JournalFileSize int64
	// JournalRecycleFiles is how many journal files that a checkpoint
	// retired are kept to be reused (renamed and overwritten, skipping the
	// zero fill) instead of deleted. 0 means the default 4; negative
	// disables recycling.
	JournalRecycleFiles int
	// EntryLogSize rolls an entry log over once it reaches this size.
	// Default 256 MiB.
	EntryLogSize int64
	// CheckpointInterval is the period of checkpoints (sync entry logs,
	// persist the index with the journal position, retire journal files).
	// Default 30s.
	CheckpointInterval time.Duration
	// CheckpointJournalFiles also triggers a checkpoint once this many
	// journal files were started since the last one. Default 4.
	CheckpointJournalFiles int
	// CompactionThreshold compacts a sealed entry log whose live bytes fall
	// below this share of its size (entry logs with no live bytes are
	// deleted whole regardless). 0 means the default 0.5; negative
	// disables compaction.
	CompactionThreshold float64
	// MaxEntrySize bounds an entry's payload. Default 8 MiB, at most
	// MaxEntrySizeLimit.
	MaxEntrySize int
	// MaxInflightBytes bounds the bytes accepted by AddEntry but not yet
	// applied to the entry logs; AddEntry blocks above it (backpressure).
	// Default 256 MiB.
	MaxInflightBytes int64
	// Registerer receives the quire_bookie_* metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logf receives rare diagnostic messages (Pebble errors). Default: none.
	Logf func(format string, args ...any)

	// testHook, when set, is called at named points of checkpoints and
	// compactions so that crash tests can take a crash clone there.
	testHook func(point string)
	// syncHook, when set, is called by the journal after each group
	// commit with its write+fdatasync time and bytes (benchmarks).
	syncHook func(d time.Duration, bytes int)
}

// EnsureDefaults fills zero fields with their defaults and returns o.
func (o *Options) EnsureDefaults() *Options {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.JournalDir == "" && o.Dir != "" {
		o.JournalDir = o.FS.PathJoin(o.Dir, "journal")
	}
	if o.MaxGroupWait <= 0 {
		o.MaxGroupWait = 2 * time.Millisecond
	}
	if o.MaxGroupBytes <= 0 {
		o.MaxGroupBytes = 512 << 10
	}
	if o.JournalFileSize <= 0 {
		o.JournalFileSize = 64 << 20
	}
	if o.JournalRecycleFiles == 0 {
		o.JournalRecycleFiles = 4
	}
	if o.EntryLogSize <= 0 {
		o.EntryLogSize = 256 << 20
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = 30 * time.Second
	}
	if o.CheckpointJournalFiles <= 0 {
		o.CheckpointJournalFiles = 4
	}
	if o.CompactionThreshold == 0 {
		o.CompactionThreshold = 0.5
	}
	if o.MaxEntrySize <= 0 {
		o.MaxEntrySize = 8 << 20
	}
	if o.MaxInflightBytes <= 0 {
		o.MaxInflightBytes = 256 << 20
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

// Validate reports options that are missing or out of range.
func (o *Options) Validate() error {
	var errs []error
	if o.Dir == "" {
		errs = append(errs, errors.New("bookie: Options.Dir is required"))
	}
	if o.BookieID == "" {
		errs = append(errs, errors.New("bookie: Options.BookieID is required"))
	}
	if o.Cookies == nil {
		errs = append(errs, errors.New("bookie: Options.Cookies is required"))
	}
	if o.MaxEntrySize > MaxEntrySizeLimit {
		errs = append(errs, fmt.Errorf("MaxEntrySize %d above the format limit %d", o.MaxEntrySize, MaxEntrySizeLimit))
	}
	if o.JournalFileSize < 4096 {
		errs = append(errs, fmt.Errorf("JournalFileSize %d below 4096", o.JournalFileSize))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bookie: invalid options: %w", err)
	}
	return nil
}
