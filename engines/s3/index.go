package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/shard"
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
	// Writer is the token of the engine that last opened the shard for
	// writing: writing it (by CAS) fences the previous writer's trims and
	// seals, whose CAS then fails.
	Writer string `json:"writer,omitempty"`
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
	// Writer is the token of the engine that committed the entry.
	Writer string `json:"writer,omitempty"`
	// Claim says the entry replaced its writer's claim (a marker) on the
	// key: a trim leaves a marker there instead of deleting it, so that a
	// fenced writer whose next key it was cannot create it again.
	Claim bool `json:"claim,omitempty"`
}

// A marker is an entry with no records (Count 0, no Key): at the shard's
// high it is the claim of the shard's writer on the next key (see fencing
// in doc.go); below it, the trace of a trimmed Claim entry.
func (r *objectRecord) marker() bool { return r.Count == 0 }

// ErrFenced is matched (with shard.ErrFailed) by the appends of a shard that
// another engine has opened for writing since (and by its trims and seals):
// the other engine now writes the shard, this handle must not.
var ErrFenced = errors.New("s3: fenced: another engine opened the shard for writing")

// errNotApplied marks an ambiguous meta write that, read back, was not
// applied: a plain failure (it still matches meta.ErrAmbiguous).
var errNotApplied = errors.New("not applied")

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
// new version.
func (e *Engine) putState(ctx context.Context, rec shardRecord, version uint64) (uint64, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	kv, err := e.casPut(ctx, e.shardKey(rec.Name), b, version)
	return kv.Version, err
}

// casPut writes key by CAS against version. An ambiguous outcome
// (meta.ErrAmbiguous) is resolved by reading the key back: holding val, the
// write took; holding the version given (or absent, for version 0), it did
// not (errNotApplied); holding another write, it lost to that write
// (meta.ErrVersionMismatch). If the read fails too, the error still matches
// meta.ErrAmbiguous.
func (e *Engine) casPut(ctx context.Context, key string, val []byte, version uint64) (meta.KeyValue, error) {
	kv, err := e.kv.Put(ctx, key, val, meta.IfVersion(version))
	if !errors.Is(err, meta.ErrAmbiguous) {
		return kv, err
	}
	cur, gerr := e.kv.Get(ctx, key)
	switch {
	case gerr == nil && bytes.Equal(cur.Value, val):
		return cur, nil
	case gerr == nil && cur.Version == version, errors.Is(gerr, meta.ErrNotFound) && version == 0:
		return meta.KeyValue{}, fmt.Errorf("%w: %w", errNotApplied, err)
	case gerr == nil:
		return meta.KeyValue{}, fmt.Errorf("%w: %s changed (read back after: %v)", meta.ErrVersionMismatch, key, err)
	}
	return meta.KeyValue{}, fmt.Errorf("%w; reading it back: %v", err, gerr)
}

// claim puts the writer's marker on the index key at high, fencing any
// other writer (whose next commit is a CAS on that key), and returns the
// marker's version. version is that of the marker found at high (0: none).
// Entries another writer commits meanwhile are read, returned, and the
// claim moves past them.
func (e *Engine) claim(ctx context.Context, name, id string, high uint64, writer string, version uint64) (uint64, []objectRecord, error) {
	ctx, cancel := e.opCtx(ctx)
	defer cancel()
	var more []objectRecord
	for {
		val, _ := json.Marshal(objectRecord{First: high, Writer: writer})
		kv, err := e.casPut(ctx, e.indexKey(id, high), val, version)
		if err == nil {
			return kv.Version, more, nil
		}
		if !errors.Is(err, meta.ErrVersionMismatch) {
			return 0, nil, fmt.Errorf("s3: %q: claim index key %d: %w", name, high, err)
		}
		cur, err := e.kv.Get(ctx, e.indexKey(id, high))
		if errors.Is(err, meta.ErrNotFound) {
			version = 0
			continue
		} else if err != nil {
			return 0, nil, fmt.Errorf("s3: %q: claim index key %d: %w", name, high, err)
		}
		var o objectRecord
		if err := jsonDecode(cur.Value, &o); err != nil {
			return 0, nil, &shard.CorruptError{Shard: name, File: cur.Key, Reason: fmt.Sprintf("damaged index entry: %v", err)}
		}
		if o.marker() { // another engine's claim: take it over
			version = cur.Version
			continue
		}
		more = append(more, o) // committed by the writer being fenced
		high, version = o.end(), 0
	}
}

func decodeShard(kv meta.KeyValue) (shardRecord, error) {
	var r shardRecord
	if err := json.Unmarshal(kv.Value, &r); err != nil || r.ID == "" {
		return r, fmt.Errorf("s3: damaged shard record %s: %v", kv.Key, err)
	}
	return r, nil
}
