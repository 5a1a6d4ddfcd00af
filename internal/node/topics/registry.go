package topics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/quiremq/quire/shard"
)

// Limits on topics.
const (
	// MaxNameBytes bounds a topic name (Kafka's limit).
	MaxNameBytes = 249
	// MaxPartitions bounds the partitions of one topic.
	MaxPartitions = 1024
)

// Options configure a Registry.
type Options struct {
	// Store keeps the list of topics. Required.
	Store Store
	// Router picks the engine of a topic that names none, and resolves
	// engine names. Required.
	Router *shard.Router
	// Ephemeral names the engines whose shards do not survive a restart
	// ("memory"); Open creates their shards again.
	Ephemeral map[string]bool
	// NodeID is this node: a topic whose Node is another node has its
	// shards there (none here); 0 for a registry of a single node.
	NodeID uint64
	// Foreign, when set, names the shards a front-end owns rather than a
	// topic (MQTT's hashed "mqtt/<engine>/<n>" shards): Open never deletes
	// them as orphans.
	Foreign func(shard string) bool
	// Logger receives warnings about missing and orphaned shards.
	Logger *slog.Logger
	// Now is the clock for CreatedAt; default time.Now.
	Now func() time.Time
}

// Registry joins the topic Store to the storage engines. It is safe for
// concurrent use; creates and deletes are serialized.
type Registry struct {
	opts Options

	mu     sync.Mutex
	shards map[string]openShard // open shards by shard name
	errs   map[string]string    // shard name -> why it is not open
	closed bool
}

// openShard is an open shard and the name of its engine.
type openShard struct {
	shard.Shard
	engine string
}

// PartitionInfo describes one partition of a topic.
type PartitionInfo struct {
	Partition int    `json:"partition"`
	Shard     string `json:"shard"`
	Low       uint64 `json:"low"`
	High      uint64 `json:"high"`
	Sealed    bool   `json:"sealed"`
	// Error says why the shard is not available; "" when it is.
	Error string `json:"error,omitempty"`
	// Node is the node hosting the shard when it is not this node (0: this
	// node); its watermarks are then unknown here.
	Node uint64 `json:"node,omitempty"`
}

// Info is a topic with the state of its partitions.
type Info struct {
	Topic
	Shards []PartitionInfo `json:"shards"`
}

// NewRegistry returns a registry; call Open before using it.
func NewRegistry(opts Options) *Registry {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Registry{opts: opts, shards: map[string]openShard{}, errs: map[string]string{}}
}

// Open opens the shards of every registered topic and deletes orphaned
// shards (see the package doc).
func (r *Registry) Open(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	ts, err := r.opts.Store.List(ctx)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, t := range ts {
		if !r.local(t) {
			continue
		}
		e, ok := r.opts.Router.Lookup(t.Engine)
		if !ok {
			return fmt.Errorf("topics: topic %q is stored on engine %q, which this node does not run", t.Name, t.Engine)
		}
		for p := range t.Partitions {
			name := ShardName(t.Name, p)
			want[name] = true
			s, err := e.Open(ctx, name)
			if errors.Is(err, shard.ErrNotFound) && r.opts.Ephemeral[t.Engine] {
				s, err = e.Create(ctx, name)
			}
			if err != nil {
				if errors.Is(err, shard.ErrNotFound) {
					err = fmt.Errorf("shard %q is missing from engine %q: its data is lost", name, t.Engine)
				}
				r.errs[name] = err.Error()
				r.opts.Logger.Error("topic partition unavailable", "topic", t.Name, "partition", p, "err", err)
				continue
			}
			r.shards[name] = openShard{s, t.Engine}
		}
	}
	for en, e := range r.opts.Router.Engines() {
		names, err := e.List(ctx)
		if err != nil {
			return fmt.Errorf("topics: list shards of engine %q: %w", en, err)
		}
		var orphans []string
		for _, n := range names {
			if !want[n] && (r.opts.Foreign == nil || !r.opts.Foreign(n)) {
				orphans = append(orphans, n)
			}
		}
		if len(orphans) == 0 {
			continue
		}
		if !r.opts.Store.Existed() {
			return fmt.Errorf("topics: engine %q holds %d shards (%s) but the topic registry is new: it was lost or removed; refusing to start rather than delete them", en, len(orphans), strings.Join(firstN(orphans, 5), ", "))
		}
		for _, n := range orphans {
			r.opts.Logger.Warn("deleting orphaned shard left by an interrupted topic create or delete", "engine", en, "shard", n)
			if err := e.Delete(ctx, n); err != nil && !errors.Is(err, shard.ErrNotFound) {
				return fmt.Errorf("topics: delete orphaned shard %q of engine %q: %w", n, en, err)
			}
		}
	}
	return nil
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "...")
	}
	return s
}

// validateName checks a topic name: 1 to MaxNameBytes bytes of valid UTF-8,
// no control characters, no MQTT wildcards ('+', '#'), no leading or
// trailing space.
func validateName(name string) error {
	switch {
	case name == "" || len(name) > MaxNameBytes:
		return fmt.Errorf("%w: topic name must be 1 to %d bytes, got %d", ErrInvalid, MaxNameBytes, len(name))
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: topic name %q is not valid UTF-8", ErrInvalid, name)
	case strings.ContainsAny(name, "+#"):
		return fmt.Errorf("%w: topic name %q contains an MQTT wildcard ('+' or '#')", ErrInvalid, name)
	case strings.TrimSpace(name) != name:
		return fmt.Errorf("%w: topic name %q starts or ends with white space", ErrInvalid, name)
	}
	for _, c := range name {
		if unicode.IsControl(c) {
			return fmt.Errorf("%w: topic name %q contains a control character", ErrInvalid, name)
		}
	}
	return nil
}

// Create makes a topic with partitions shards on engine ("" = the router's
// choice for name; partitions 0 = 1).
func (r *Registry) Create(ctx context.Context, name, engine string, partitions int) (Info, error) {
	if err := validateName(name); err != nil {
		return Info{}, err
	}
	if partitions == 0 {
		partitions = 1
	}
	if partitions < 1 || partitions > MaxPartitions {
		return Info{}, fmt.Errorf("%w: partitions must be 1 to %d, got %d", ErrInvalid, MaxPartitions, partitions)
	}
	if engine == "" {
		engine = r.opts.Router.EngineName(name)
	}
	e, ok := r.opts.Router.Lookup(engine)
	if !ok {
		return Info{}, fmt.Errorf("%w: unknown engine %q (this node runs %s)", ErrInvalid, engine, strings.Join(r.engineNames(), ", "))
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return Info{}, shard.ErrClosed
	}
	if _, err := r.opts.Store.Get(ctx, name); err == nil {
		return Info{}, fmt.Errorf("topic %q: %w", name, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return Info{}, err
	}
	t := Topic{Name: name, Engine: engine, Partitions: partitions, CreatedAt: r.opts.Now().UTC().Truncate(time.Millisecond), Node: r.opts.NodeID}
	var created []shard.Shard
	undo := func() {
		for _, s := range created {
			if err := e.Delete(context.WithoutCancel(ctx), s.Name()); err != nil {
				r.opts.Logger.Warn("could not delete shard of a failed topic create; it is deleted at the next start", "shard", s.Name(), "err", err)
			}
		}
	}
	for p := range partitions {
		s, err := e.Create(ctx, ShardName(name, p))
		if err != nil {
			undo()
			if errors.Is(err, shard.ErrInvalidName) {
				err = fmt.Errorf("%w: %v", ErrInvalid, err)
			}
			return Info{}, fmt.Errorf("topics: create %q: %w", name, err)
		}
		created = append(created, s)
	}
	if err := r.opts.Store.Create(ctx, t); err != nil {
		undo()
		return Info{}, err
	}
	for _, s := range created {
		r.shards[s.Name()] = openShard{s, engine}
		delete(r.errs, s.Name())
	}
	return r.info(t), nil
}

func (r *Registry) engineNames() []string {
	var ns []string
	for n := range r.opts.Router.Engines() {
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return ns
}

// Delete removes a topic and deletes its shards.
func (r *Registry) Delete(ctx context.Context, name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return shard.ErrClosed
	}
	// Delete returns the topic it deleted: reading it first would race with
	// another node deleting and re-creating it in between.
	t, err := r.opts.Store.Delete(ctx, name)
	if err != nil && t.Name == "" {
		return err
	}
	if !r.local(t) {
		return err // node t.Node deletes the shards (Sync, or at its next start)
	}
	if derr := r.dropShards(ctx, t); derr != nil {
		return errors.Join(err, derr)
	}
	return err
}

// local reports whether this node hosts t's shards.
func (r *Registry) local(t Topic) bool {
	return t.Node == 0 || r.opts.NodeID == 0 || t.Node == r.opts.NodeID
}

// dropShards deletes the shards of t, which is no longer in the Store.
// r.mu is held.
func (r *Registry) dropShards(ctx context.Context, t Topic) error {
	name := t.Name
	e, ok := r.opts.Router.Lookup(t.Engine)
	var errs []error
	for p := range t.Partitions {
		sn := ShardName(name, p)
		delete(r.shards, sn)
		delete(r.errs, sn)
		if !ok {
			continue
		}
		if err := e.Delete(ctx, sn); err != nil && !errors.Is(err, shard.ErrNotFound) {
			r.opts.Logger.Warn("could not delete shard of a deleted topic; it is deleted at the next start", "shard", sn, "err", err)
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("topics: topic %q deleted, but not all of its data: %w", name, errors.Join(errs...))
	}
	return nil
}

// Sync deletes the shards of topics hosted here that are gone from the
// Store: topics deleted through another node of the cluster. The node calls
// it when it sees topics deleted in meta.
func (r *Registry) Sync(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return shard.ErrClosed
	}
	ts, err := r.opts.Store.List(ctx)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, t := range ts {
		for p := range t.Partitions {
			keep[ShardName(t.Name, p)] = true
		}
	}
	// Only open shards can belong to a topic deleted since Open (which
	// deals with the rest): no engine is listed, which for an object store
	// would be a LIST per deleted topic.
	var errs []error
	for _, n := range slices.Sorted(maps.Keys(r.shards)) {
		if keep[n] {
			continue
		}
		en := r.shards[n].engine
		r.opts.Logger.Info("deleting the shard of a topic deleted through another node", "engine", en, "shard", n)
		delete(r.shards, n)
		delete(r.errs, n)
		e, ok := r.opts.Router.Lookup(en)
		if !ok {
			continue
		}
		if err := e.Delete(ctx, n); err != nil && !errors.Is(err, shard.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// List returns every topic with its partitions' state.
func (r *Registry) List(ctx context.Context) ([]Info, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ts, err := r.opts.Store.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Info, 0, len(ts))
	for _, t := range ts {
		out = append(out, r.info(t))
	}
	return out, nil
}

// Get returns one topic with its partitions' state.
func (r *Registry) Get(ctx context.Context, name string) (Info, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, err := r.opts.Store.Get(ctx, name)
	if err != nil {
		return Info{}, err
	}
	return r.info(t), nil
}

// Shard returns the open shard of partition p of topic.
func (r *Registry) Shard(topic string, p int) (shard.Shard, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := ShardName(topic, p)
	if s, ok := r.shards[name]; ok {
		return s.Shard, nil
	}
	if e, ok := r.errs[name]; ok {
		return nil, errors.New(e)
	}
	return nil, fmt.Errorf("topic %q partition %d: %w", topic, p, ErrNotFound)
}

// Count returns the number of topics and of partitions.
func (r *Registry) Count(ctx context.Context) (topics, partitions int) {
	ts, err := r.opts.Store.List(ctx)
	if err != nil {
		return 0, 0
	}
	for _, t := range ts {
		partitions += t.Partitions
	}
	return len(ts), partitions
}

func (r *Registry) info(t Topic) Info {
	in := Info{Topic: t, Shards: make([]PartitionInfo, t.Partitions)}
	for p := range t.Partitions {
		name := ShardName(t.Name, p)
		pi := PartitionInfo{Partition: p, Shard: name}
		if !r.local(t) {
			pi.Node = t.Node
		} else if s, ok := r.shards[name]; ok {
			pi.Low, pi.High = s.Watermarks()
			pi.Sealed = s.Sealed()
		} else if e, ok := r.errs[name]; ok {
			pi.Error = e
		} else {
			pi.Error = "not open"
		}
		in.Shards[p] = pi
	}
	return in
}

// Close makes the registry refuse further creates and deletes and drops its
// shard handles. It does not close the shards: their engines own them, and
// Engine.Close flushes and closes every shard.
func (r *Registry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.shards = map[string]openShard{}
	return nil
}
