package file

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// MetaManifest keeps the records in meta, one key per offloaded segment:
// <Prefix><shard directory name>/<base, 20 digits> holding the JSON of a
// RemoteSegment, changed with meta's version CAS. Prefix must be unique to
// the engine (file engines are per node: the node puts its id in it).
type MetaManifest struct {
	KV     meta.KV
	Prefix string // e.g. "/offload/file/<node id>/"; must end in "/"
}

var _ Manifest = MetaManifest{}

func (m MetaManifest) shardPrefix(shard string) string { return m.Prefix + dirName(shard) + "/" }

func (m MetaManifest) key(shard string, base uint64) string {
	return fmt.Sprintf("%s%020d", m.shardPrefix(shard), base)
}

// Load lists the shard's records.
func (m MetaManifest) Load(ctx context.Context, shard string) ([]RemoteSegment, error) {
	out, err := schema.ListValues[RemoteSegment](ctx, m.KV, m.shardPrefix(shard))
	if err != nil {
		return nil, fmt.Errorf("file: load offload manifest of %q: %w", shard, err)
	}
	return out, nil
}

// CAS replaces one record; see Manifest.
func (m MetaManifest) CAS(ctx context.Context, shard string, base uint64, old, new *RemoteSegment) error {
	if new != nil && new.Base != base {
		return fmt.Errorf("file: offload manifest: record of base %d stored under %d", new.Base, base)
	}
	if !strings.HasSuffix(m.Prefix, "/") {
		return fmt.Errorf("file: MetaManifest.Prefix %q must end in /", m.Prefix)
	}
	key := m.key(shard, base)
	var version uint64 // 0: must not exist
	if old != nil {
		kv, err := m.KV.Get(ctx, key)
		if errors.Is(err, meta.ErrNotFound) {
			return fmt.Errorf("%w: %q segment %d does not exist", ErrManifestConflict, shard, base)
		}
		if err != nil {
			return fmt.Errorf("file: offload manifest: %w", err)
		}
		var cur RemoteSegment
		if err := json.Unmarshal(kv.Value, &cur); err != nil || cur != *old {
			return fmt.Errorf("%w: %q segment %d is not the expected record", ErrManifestConflict, shard, base)
		}
		version = kv.Version
	}
	var err error
	if new == nil {
		if old == nil {
			return nil
		}
		_, err = m.KV.Delete(ctx, key, meta.IfVersion(version))
	} else {
		b, merr := json.Marshal(new)
		if merr != nil {
			return merr
		}
		_, err = m.KV.Put(ctx, key, b, meta.IfVersion(version))
	}
	if errors.Is(err, meta.ErrVersionMismatch) || (old != nil && errors.Is(err, meta.ErrNotFound)) {
		return fmt.Errorf("%w: %q segment %d: %v", ErrManifestConflict, shard, base, err)
	}
	if err != nil {
		return fmt.Errorf("file: offload manifest: %w", err)
	}
	return nil
}
