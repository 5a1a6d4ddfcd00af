package topics

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// MetaStore is a Store in the meta service (schema.Store: /topics/<name>,
// with a /shards/<topic>/<p> record per partition). Creates and deletes are
// Raft writes (a create is a CAS on "must not exist", so two nodes creating
// the same topic at once cannot both succeed) and reads are linearizable,
// so every node of a cluster sees the same topics. Calls wait out an
// election (ErrNotLeader: nothing was applied) for up to 5s.
type MetaStore struct {
	s       schema.Store
	existed bool
}

var _ Store = (*MetaStore)(nil)

// NewMetaStore returns a Store over kv. existed is what Existed reports:
// whether this node's meta held state before this start (or an older
// registry was migrated into it), i.e. whether shards found in the engines
// but in no topic may be deleted as leftovers.
func NewMetaStore(kv meta.KV, existed bool) *MetaStore {
	return &MetaStore{s: schema.Store{KV: kv}, existed: existed}
}

// leaderWait bounds how long a call waits out an election: meta answers
// ErrNotLeader (nothing applied, safe to retry) while there is no leader.
const leaderWait = 5 * time.Second

// retry runs fn again while meta has no leader, up to leaderWait or ctx's
// end.
func retry(ctx context.Context, fn func() error) error {
	wait, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	return schema.RetryNotLeader(wait, fn)
}

func fromSchema(t schema.Topic) Topic {
	return Topic{Name: t.Name, Engine: t.Engine, Partitions: t.Partitions, CreatedAt: t.CreatedAt, Node: t.Node}
}

// List implements Store.
func (s *MetaStore) List(ctx context.Context) ([]Topic, error) {
	var rs []schema.Record[schema.Topic]
	err := retry(ctx, func() (err error) { rs, err = s.s.Topics(ctx); return err })
	if err != nil {
		return nil, fmt.Errorf("topics: listing topics in meta: %w", err)
	}
	ts := make([]Topic, len(rs))
	for i, r := range rs {
		ts[i] = fromSchema(r.Value)
	}
	return ts, nil
}

// Get implements Store.
func (s *MetaStore) Get(ctx context.Context, name string) (Topic, error) {
	var r schema.Record[schema.Topic]
	err := retry(ctx, func() (err error) { r, err = s.s.Topic(ctx, name); return err })
	if errors.Is(err, meta.ErrNotFound) {
		return Topic{}, fmt.Errorf("topic %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Topic{}, fmt.Errorf("topics: reading topic %q in meta: %w", name, err)
	}
	return fromSchema(r.Value), nil
}

// Create implements Store.
func (s *MetaStore) Create(ctx context.Context, t Topic) error {
	err := retry(ctx, func() error {
		return s.s.CreateTopic(ctx, schema.Topic{Name: t.Name, Engine: t.Engine, Partitions: t.Partitions, CreatedAt: t.CreatedAt, Node: t.Node})
	})
	switch {
	case errors.Is(err, schema.ErrExists):
		return fmt.Errorf("topic %q: %w", t.Name, ErrExists)
	case err != nil:
		return fmt.Errorf("topics: recording topic %q in meta: %w", t.Name, err)
	}
	return nil
}

// Delete implements Store.
func (s *MetaStore) Delete(ctx context.Context, name string) (Topic, error) {
	var t schema.Topic
	err := retry(ctx, func() error {
		var err error
		t, err = s.s.DeleteTopic(ctx, name)
		return err
	})
	switch {
	case errors.Is(err, meta.ErrNotFound), errors.Is(err, meta.ErrVersionMismatch):
		return Topic{}, fmt.Errorf("topic %q: %w", name, ErrNotFound)
	case err != nil && t.Name == "":
		return Topic{}, fmt.Errorf("topics: deleting topic %q in meta: %w", name, err)
	case err != nil:
		// The topic is deleted (the commit point); a shard record was
		// left behind: report it, and let the caller drop the shards.
		return fromSchema(t), fmt.Errorf("topics: topic %q deleted, but not all of its shard records: %w", name, err)
	}
	return fromSchema(t), nil
}

// Existed implements Store.
func (s *MetaStore) Existed() bool { return s.existed }

// ErrMigrate is returned by Migrate when a topic of the old registry is in
// the new one already, hosted by another node.
var ErrMigrate = errors.New("topics: cannot migrate the registry")

// Migrate copies the topics of from (an older node's local registry) into
// to, recording node as their host. A topic already in to and hosted by
// node was copied by an earlier, interrupted migration and is skipped; one
// hosted elsewhere is a name clash, which fails with ErrMigrate (nothing is
// deleted: its shards here would otherwise be taken for leftovers). Returns
// how many topics it copied.
func Migrate(ctx context.Context, from, to Store, node uint64) (int, error) {
	ts, err := from.List(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range ts {
		if t.Node == 0 {
			t.Node = node
		}
		have, err := to.Get(ctx, t.Name)
		switch {
		case err == nil && have.Node == t.Node:
			continue
		case err == nil:
			return n, fmt.Errorf("%w: topic %q of this node's old registry exists in meta already, hosted by node %d: rename or delete one of them", ErrMigrate, t.Name, have.Node)
		case !errors.Is(err, ErrNotFound):
			return n, err
		}
		if err := to.Create(ctx, t); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
