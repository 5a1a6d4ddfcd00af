// Package topics is the node's topic registry: which topics exist, on which
// engine, with how many partitions, and the shards that hold them.
//
// A topic with N partitions is stored as N shards named "<topic>/<partition>"
// (orders/0, orders/1, ...; sensors/temp/0). The partition is the text after
// the last '/', so two topics can never map to the same shard name, and a
// topic name may itself contain '/' (MQTT-style names).
//
// The list of topics lives behind Store, a narrow interface with an in-memory
// implementation (MemStore), a local, durable one (FileStore: one JSON file
// rewritten atomically) and the cluster's (MetaStore: records in the meta
// service, written through Raft and read linearizably, so that every node
// of a cluster lists the same topics). Registry joins a Store to the
// storage engines:
//
//   - Create makes the shards first, then records the topic in the Store; the
//     Store write is the commit point. A failed Store write deletes the shards.
//   - Delete removes the topic from the Store first (the commit point), then
//     deletes its shards.
//   - Open, at start, opens every topic's shards. Shards of an ephemeral
//     engine (memory) do not survive a restart and are created again, empty.
//     Shards that belong to no topic are left over from a create or delete
//     that a crash interrupted, and are deleted — but only when the Store says
//     it has a history (Store.Existed); an engine holding shards while the
//     registry is brand new means the registry was lost, and Open refuses to
//     start rather than guess.
//   - A registered shard that is missing from a durable engine, or fails to
//     open (corrupt), is reported on its partition (PartitionInfo.Error) and
//     logged; the other topics are served, and the topic can still be deleted.
//   - Shards are local: a topic's shards live on the node it was created
//     through (Topic.Node). Other nodes list the topic, with its partitions
//     marked as hosted there (PartitionInfo.Node), and can delete it; the
//     hosting node then deletes the shards when it sees the delete (Sync)
//     or, at the latest, as orphans at its next start. Placing and moving
//     shards across nodes arrives with the journal engine.
package topics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quiremq/quire/internal/vfs"
)

// Topic is one registered topic.
type Topic struct {
	Name       string    `json:"name"`
	Engine     string    `json:"engine"`
	Partitions int       `json:"partitions"`
	CreatedAt  time.Time `json:"created_at"`
	// Node is the node whose engines hold the topic's shards (the node it
	// was created through); 0 (a registry of a single node) means this
	// node. Shards are local to one node until the journal engine places
	// them across the cluster.
	Node uint64 `json:"node,omitempty"`
}

// ShardName returns the name of the shard holding partition p of topic.
func ShardName(topic string, p int) string { return fmt.Sprintf("%s/%d", topic, p) }

// Store keeps the list of topics. Implementations are safe for concurrent use.
type Store interface {
	// List returns every topic, sorted by name.
	List(ctx context.Context) ([]Topic, error)
	// Get returns the topic called name, or ErrNotFound.
	Get(ctx context.Context, name string) (Topic, error)
	// Create records t, or fails with ErrExists.
	Create(ctx context.Context, t Topic) error
	// Delete forgets the topic called name and returns it as it was, or
	// fails with ErrNotFound.
	Delete(ctx context.Context, name string) (Topic, error)
	// Existed reports whether the store held state before this process opened
	// it (false for a brand-new store).
	Existed() bool
}

// Errors returned by Store and Registry. Test with errors.Is.
var (
	// ErrNotFound is returned when a topic does not exist.
	ErrNotFound = errors.New("topics: not found")
	// ErrExists is returned by Create when the topic exists.
	ErrExists = errors.New("topics: already exists")
	// ErrInvalid is returned for a bad topic name, partition count or engine.
	ErrInvalid = errors.New("topics: invalid")
	// ErrCorrupt is returned when the stored registry cannot be decoded.
	ErrCorrupt = errors.New("topics: registry is corrupt")
)

// MemStore is a Store in memory. Its zero value is empty and ready to use.
type MemStore struct {
	mu      sync.Mutex
	topics  map[string]Topic
	existed bool
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns a MemStore holding ts, which reports Existed() as
// existed.
func NewMemStore(existed bool, ts ...Topic) *MemStore {
	s := &MemStore{topics: map[string]Topic{}, existed: existed}
	for _, t := range ts {
		s.topics[t.Name] = t
	}
	return s
}

// List implements Store.
func (s *MemStore) List(context.Context) ([]Topic, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sorted(s.topics), nil
}

func sorted(m map[string]Topic) []Topic {
	ts := make([]Topic, 0, len(m))
	for _, t := range m {
		ts = append(ts, t)
	}
	slices.SortFunc(ts, func(a, b Topic) int { return strings.Compare(a.Name, b.Name) })
	return ts
}

// Get implements Store.
func (s *MemStore) Get(_ context.Context, name string) (Topic, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.topics[name]
	if !ok {
		return Topic{}, fmt.Errorf("topic %q: %w", name, ErrNotFound)
	}
	return t, nil
}

// Create implements Store.
func (s *MemStore) Create(_ context.Context, t Topic) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.topics[t.Name]; ok {
		return fmt.Errorf("topic %q: %w", t.Name, ErrExists)
	}
	if s.topics == nil {
		s.topics = map[string]Topic{}
	}
	s.topics[t.Name] = t
	return nil
}

// Delete implements Store.
func (s *MemStore) Delete(_ context.Context, name string) (Topic, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.topics[name]
	if !ok {
		return Topic{}, fmt.Errorf("topic %q: %w", name, ErrNotFound)
	}
	delete(s.topics, name)
	return t, nil
}

// Existed implements Store.
func (s *MemStore) Existed() bool { return s.existed }

// FileStore is a Store kept in one JSON file, rewritten atomically (write a
// temporary file, fsync, rename, fsync the directory) on every change, so
// that after a crash the file holds either the old or the new list:
//
//	{"version": 1, "topics": [{"name": "orders", "engine": "file",
//	  "partitions": 3, "created_at": "2026-01-02T15:04:05Z"}]}
type FileStore struct {
	fs      vfs.FS
	path    string
	existed bool

	mu     sync.Mutex
	topics map[string]Topic
}

var _ Store = (*FileStore)(nil)

// fileVersion is the format version of the registry file.
const fileVersion = 1

type fileDoc struct {
	Version int     `json:"version"`
	Topics  []Topic `json:"topics"`
}

// OpenFileStore reads the registry at path on fs, or creates an empty one
// (written at once, so that a later start knows the registry existed).
func OpenFileStore(fs vfs.FS, path string) (*FileStore, error) {
	s := &FileStore{fs: fs, path: path, topics: map[string]Topic{}}
	data, err := vfs.ReadFile(fs, path)
	switch {
	case vfs.IsNotExist(err):
		if err := s.write(s.topics); err != nil {
			return nil, err
		}
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("topics: read %s: %w", path, err)
	}
	s.existed = true
	var doc fileDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	if doc.Version != fileVersion {
		return nil, fmt.Errorf("%w: %s: format version %d, this build reads %d", ErrCorrupt, path, doc.Version, fileVersion)
	}
	for _, t := range doc.Topics {
		if _, dup := s.topics[t.Name]; dup || validateName(t.Name) != nil || t.Partitions < 1 || t.Engine == "" {
			return nil, fmt.Errorf("%w: %s: bad or duplicate topic %+v", ErrCorrupt, path, t)
		}
		s.topics[t.Name] = t
	}
	return s, nil
}

func (s *FileStore) write(m map[string]Topic) error {
	data, err := json.MarshalIndent(fileDoc{Version: fileVersion, Topics: sorted(m)}, "", "  ")
	if err != nil {
		return err
	}
	if err := vfs.WriteFileAtomic(s.fs, s.path, append(data, '\n')); err != nil {
		return fmt.Errorf("topics: write %s: %w", s.path, err)
	}
	return nil
}

// List implements Store.
func (s *FileStore) List(context.Context) ([]Topic, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sorted(s.topics), nil
}

// Get implements Store.
func (s *FileStore) Get(_ context.Context, name string) (Topic, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.topics[name]
	if !ok {
		return Topic{}, fmt.Errorf("topic %q: %w", name, ErrNotFound)
	}
	return t, nil
}

// Create implements Store. The topic is in memory only once it is on disk.
func (s *FileStore) Create(_ context.Context, t Topic) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.topics[t.Name]; ok {
		return fmt.Errorf("topic %q: %w", t.Name, ErrExists)
	}
	next := maps.Clone(s.topics)
	next[t.Name] = t
	if err := s.write(next); err != nil {
		return err
	}
	s.topics = next
	return nil
}

// Delete implements Store.
func (s *FileStore) Delete(_ context.Context, name string) (Topic, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.topics[name]
	if !ok {
		return Topic{}, fmt.Errorf("topic %q: %w", name, ErrNotFound)
	}
	next := maps.Clone(s.topics)
	delete(next, name)
	if err := s.write(next); err != nil {
		return Topic{}, err
	}
	s.topics = next
	return t, nil
}

// Existed implements Store.
func (s *FileStore) Existed() bool { return s.existed }
