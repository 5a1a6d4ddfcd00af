package file

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/quiremq/quire/internal/vfs"
)

// RemoteSegment is where an offloaded sealed segment lives in the object
// store, with the summary a shard needs to serve it without its local file.
type RemoteSegment struct {
	Base     uint64 `json:"base"`
	End      uint64 `json:"end"`       // offset after its last record
	Size     int64  `json:"size"`      // bytes of the segment file
	MaxTs    int64  `json:"max_ts"`    // largest record timestamp (unix ms)
	CRC      uint32 `json:"crc"`       // CRC-32C of the whole segment file
	Key      string `json:"key"`       // object key of the segment file
	IndexKey string `json:"index_key"` // object key of its index file ("" if none)
	// OffloadedAt is when the location was recorded (unix ms); the local
	// copy is deleted OffloadDeleteLag later.
	OffloadedAt int64 `json:"offloaded_at"`
}

// Manifest records the locations of a shard's offloaded segments. It is
// the seam between offload and where its state is kept: FileManifest (a
// durable file in the shard's directory) when the engine has no meta
// store. Every implementation passes engines/file/manifesttest.
type Manifest interface {
	// Load returns the shard's offloaded segments in ascending Base order
	// (none for an unknown shard).
	Load(ctx context.Context, shard string) ([]RemoteSegment, error)
	// CAS replaces the record of segment base of shard: old nil means the
	// record must not exist, new nil deletes it. When the current record is
	// not old, CAS changes nothing and returns an error matching
	// ErrManifestConflict. A CAS that returned nil is durable.
	CAS(ctx context.Context, shard string, base uint64, old, new *RemoteSegment) error
}

// ErrManifestConflict is returned by Manifest.CAS when the record is not the
// expected one.
var ErrManifestConflict = errors.New("file: offload manifest record changed concurrently")

// manifestFile is the name of FileManifest's file in a shard directory.
const manifestFile = "OFFLOAD"

// manifestMagic starts the OFFLOAD file: magic[8] crc u32 (of the JSON) JSON.
const manifestMagic = "QUIREOFL"

// FileManifest keeps each shard's records in <Dir>/<shard directory>/OFFLOAD
// (the shard's own directory when Dir is the engine's), replaced atomically
// with a CRC-32C, so deleting a shard's directory deletes its records.
type FileManifest struct {
	FS  vfs.FS
	Dir string

	mu sync.Mutex // serialises read-modify-write of the files
}

var _ Manifest = (*FileManifest)(nil)

// NewFileManifest returns a manifest keeping its files under dir on fs.
func NewFileManifest(fs vfs.FS, dir string) *FileManifest { return &FileManifest{FS: fs, Dir: dir} }

func (m *FileManifest) path(shard string) string {
	return m.FS.PathJoin(m.FS.PathJoin(m.Dir, dirName(shard)), manifestFile)
}

// Load reads the shard's records.
func (m *FileManifest) Load(ctx context.Context, shard string) ([]RemoteSegment, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.load(ctx, shard)
}

func (m *FileManifest) load(ctx context.Context, shard string) ([]RemoteSegment, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := m.path(shard)
	b, err := vfs.ReadFile(m.FS, p)
	if vfs.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("file: read offload manifest %s: %w", p, err)
	}
	if len(b) < 12 || string(b[:8]) != manifestMagic || le.Uint32(b[8:]) != crc(b[12:]) {
		return nil, fmt.Errorf("file: offload manifest %s is damaged (bad magic or checksum)", p)
	}
	var segs []RemoteSegment
	if err := json.Unmarshal(b[12:], &segs); err != nil {
		return nil, fmt.Errorf("file: offload manifest %s: %w", p, err)
	}
	return segs, nil
}

// CAS replaces one record; see Manifest.
func (m *FileManifest) CAS(ctx context.Context, shard string, base uint64, old, new *RemoteSegment) error {
	if new != nil && new.Base != base {
		return fmt.Errorf("file: offload manifest: record of base %d stored under %d", new.Base, base)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	segs, err := m.load(ctx, shard)
	if err != nil {
		return err
	}
	i, found := slices.BinarySearchFunc(segs, base, func(r RemoteSegment, b uint64) int { return cmpU64(r.Base, b) })
	switch {
	case old == nil && found:
		return fmt.Errorf("%w: %q segment %d exists", ErrManifestConflict, shard, base)
	case old != nil && (!found || segs[i] != *old):
		return fmt.Errorf("%w: %q segment %d is not the expected record", ErrManifestConflict, shard, base)
	}
	switch {
	case new == nil && found:
		segs = slices.Delete(segs, i, i+1)
	case new == nil:
		return nil
	case found:
		segs[i] = *new
	default:
		segs = slices.Insert(segs, i, *new)
	}
	p := m.path(shard)
	if len(segs) == 0 {
		if err := m.FS.Remove(p); err != nil && !vfs.IsNotExist(err) {
			return fmt.Errorf("file: offload manifest %s: %w", p, err)
		}
		return vfs.SyncDir(m.FS, m.FS.PathDir(p))
	}
	body, err := json.Marshal(segs)
	if err != nil {
		return err
	}
	b := make([]byte, 12, 12+len(body))
	copy(b, manifestMagic)
	le.PutUint32(b[8:], crc(body))
	b = append(b, body...)
	if err := vfs.MkdirAll(m.FS, m.FS.PathDir(p)); err != nil {
		return fmt.Errorf("file: offload manifest %s: %w", p, err)
	}
	if err := vfs.WriteFileAtomic(m.FS, p, b); err != nil {
		return fmt.Errorf("file: write offload manifest %s: %w", p, err)
	}
	return nil
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
