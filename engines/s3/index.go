package s3

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/quiremq/quire/meta"
)

// shardRecord is a shard's state in meta, at <MetaPrefix>shards/<name>.
type shardRecord struct {
	Name string `json:"name"`
	// ID names the shard's objects and index entries; a shard deleted and
	// created again gets a new one, so leftovers of the old never mix in.
	ID        string    `json:"id"`
	Low       uint64    `json:"low"`
	Sealed    bool      `json:"sealed,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// objectRecord is one object's index entry, at
// <MetaPrefix>objects/<shard id>/<first offset, 20 digits>.
type objectRecord struct {
	Key   string `json:"key"`
	First uint64 `json:"first"`
	Count int    `json:"count"`
	// MaxTS is the largest record timestamp in the object (ms).
	MaxTS int64 `json:"max_ts"`
	Size  int64 `json:"size"`
	// Bytes is the payload (key, value, headers) of the object's records.
	Bytes int64 `json:"bytes"`
}

func (r *objectRecord) end() uint64 { return r.First + uint64(r.Count) }

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (e *Engine) shardKey(name string) string { return e.opts.MetaPrefix + "shards/" + name }
func (e *Engine) indexPrefix(id string) string {
	return e.opts.MetaPrefix + "objects/" + id + "/"
}
func (e *Engine) indexKey(id string, first uint64) string {
	return fmt.Sprintf("%s%020d", e.indexPrefix(id), first)
}

// objectPrefix is where a shard's objects live in the store.
func (e *Engine) objectPrefix(id string) string { return e.opts.Prefix + id + "/" }

// objectKey names a new object; the random suffix makes every attempt a
// new object, so a retried append never overwrites one the index names.
func (e *Engine) objectKey(id string, first uint64) string {
	return fmt.Sprintf("%s%020d-%s", e.objectPrefix(id), first, newID())
}

// opCtx bounds one store or meta call.
func (e *Engine) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.opts.OpTimeout)
}

// listAll returns every key under prefix, paging through meta.
func listAll(ctx context.Context, kv meta.KV, prefix string) ([]meta.KeyValue, error) {
	var out []meta.KeyValue
	after := ""
	for {
		res, err := kv.List(ctx, prefix, meta.ListOptions{StartAfter: after})
		if err != nil {
			return nil, err
		}
		out = append(out, res.KVs...)
		if !res.More || len(res.KVs) == 0 {
			return out, nil
		}
		after = res.KVs[len(res.KVs)-1].Key
	}
}

// putState writes a shard's record by CAS against version and returns the
// new version. An ambiguous outcome is resolved by reading the key back.
func (e *Engine) putState(ctx context.Context, rec shardRecord, version uint64) (uint64, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	kv, err := e.kv.Put(ctx, e.shardKey(rec.Name), b, meta.IfVersion(version))
	if errors.Is(err, meta.ErrAmbiguous) {
		cur, gerr := e.kv.Get(ctx, e.shardKey(rec.Name))
		if gerr == nil && string(cur.Value) == string(b) {
			return cur.Version, nil
		}
	}
	if err != nil {
		return 0, err
	}
	return kv.Version, nil
}

func decodeShard(kv meta.KeyValue) (shardRecord, error) {
	var r shardRecord
	if err := json.Unmarshal(kv.Value, &r); err != nil || r.ID == "" {
		return r, fmt.Errorf("s3: damaged shard record %s: %v", kv.Key, err)
	}
	return r, nil
}
