package journal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
	"github.com/quiremq/quire/shard"
)

// PrefixShards is where the engine keeps its shard records in meta
// (/engines/journal/shards/<name>: shardRecord as JSON). Part of the
// stored format. A shard's ledgers are its journal log, /logs/<name>.
const PrefixShards = "/engines/journal/shards/"

// shardRecord is a shard's record in meta: its replication, trim point and
// seal. The log (the ledgers) is schema.Log under the same name.
type shardRecord struct {
	Name        string    `json:"name"`
	Ensemble    int       `json:"ensemble"`
	WriteQuorum int       `json:"write_quorum"`
	AckQuorum   int       `json:"ack_quorum"`
	Low         uint64    `json:"low"`
	Sealed      bool      `json:"sealed,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
}

func (r *shardRecord) quorum() Quorum { return Quorum{r.Ensemble, r.WriteQuorum, r.AckQuorum} }

// Engine is the journal shard engine: each shard is a log of ledgers
// replicated over bookies (DESIGN.md, "Journal"). Safe for concurrent use.
type Engine struct {
	o   Options
	c   *client.Client
	kv  meta.KV
	m   *engineMetrics
	log *slog.Logger

	mu     sync.Mutex
	shards map[string]*Shard
	closed bool

	stopRetention chan struct{} // closed by Close; stops the offloader too
	retentionDone chan struct{}
	offloadDone   chan struct{}
	offloadCtx    context.Context // the offload passes' and the auditor's work; cancelled by Close
	stopOffload   context.CancelFunc
	auditDone     chan struct{} // the auditor (Options.RereplicateAfter) stopped
}

var (
	_ shard.Engine          = (*Engine)(nil)
	_ shard.SettingsCreator = (*Engine)(nil)
)

// Name is the engine's name in configuration.
const Name = "journal"

// Open returns an engine over o.Client and o.Meta. It does no I/O.
func Open(o Options) (*Engine, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{o: o, c: o.Client, kv: o.Meta, m: newMetrics(o.Registerer), log: o.Logger, shards: map[string]*Shard{},
		stopRetention: make(chan struct{}), retentionDone: make(chan struct{}), offloadDone: make(chan struct{})}
	e.offloadCtx, e.stopOffload = context.WithCancel(context.Background())
	if o.RetentionAge > 0 {
		go e.every(o.RetentionInterval, e.retentionDone, e.retain) // Options.RetentionAge on the open shards
	} else {
		close(e.retentionDone)
	}
	e.auditDone = make(chan struct{})
	if o.RereplicateAfter > 0 {
		a := o.Client.NewAuditor(o.RereplicateAfter, o.Registerer)
		go func() {
			defer close(e.auditDone)
			a.Run(e.offloadCtx, o.AuditInterval, o.NodeID) // cancelled by Close
		}()
	} else {
		close(e.auditDone)
	}
	if o.Offload != nil && !o.noOffloadLoop {
		go e.every(o.Offload.Interval, e.offloadDone, e.offloadPass)
	} else {
		close(e.offloadDone)
	}
	return e, nil
}

// every runs fn every d until Close, then closes done.
func (e *Engine) every(d time.Duration, done chan struct{}, fn func(now time.Time)) {
	defer close(done)
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-e.stopRetention:
			return
		case now := <-t.C:
			fn(now)
		}
	}
}

// openShards returns the open shards.
func (e *Engine) openShards() []*Shard {
	e.mu.Lock()
	defer e.mu.Unlock()
	shards := make([]*Shard, 0, len(e.shards))
	for _, s := range e.shards {
		shards = append(shards, s)
	}
	return shards
}

// retain trims every open shard to what RetentionAge keeps at now.
func (e *Engine) retain(now time.Time) {
	shards := e.openShards()
	ctx, cancel := context.WithTimeout(context.Background(), e.o.OpTimeout)
	defer cancel()
	cutoff := now.Add(-e.o.RetentionAge).UnixMilli()
	for _, s := range shards {
		if err := s.retain(ctx, cutoff); err != nil && !errors.Is(err, shard.ErrClosed) {
			e.log.Warn("journal shard retention", "shard", s.name, "err", err)
		}
	}
}

// Name implements shard.Engine.
func (e *Engine) Name() string { return Name }

// key is the meta key of shard name's record.
func (e *Engine) key(name string) string { return PrefixShards + e.o.Prefix + name }

// logName is the name of shard name's log (schema.LogKey).
func (e *Engine) logName(name string) string { return e.o.Prefix + name }

// Create implements shard.Engine with the settings Options.Settings gives
// for name (Options.Quorum when none).
func (e *Engine) Create(ctx context.Context, name string) (shard.Shard, error) {
	var s shard.Settings
	if e.o.Settings != nil {
		s = e.o.Settings(name)
	}
	return e.CreateWith(ctx, name, s)
}

// CreateWith implements shard.SettingsCreator: s may set "ensemble",
// "write_quorum" and "ack_quorum" over Options.Quorum. They are kept in
// the shard's record, so every later writer uses them.
func (e *Engine) CreateWith(ctx context.Context, name string, s shard.Settings) (shard.Shard, error) {
	if err := shard.ValidateName(name); err != nil {
		return nil, err
	}
	q, err := e.o.Quorum.Apply(s)
	if err != nil {
		return nil, fmt.Errorf("journal engine: create %q: %w", name, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, shard.ErrClosed
	}
	rec := shardRecord{Name: name, Ensemble: q.Ensemble, WriteQuorum: q.WriteQuorum, AckQuorum: q.AckQuorum, CreatedAt: time.Now().UTC()}
	v, err := schema.Create(ctx, e.kv, e.key(name), rec)
	if errors.Is(err, schema.ErrExists) {
		return nil, fmt.Errorf("%w: %q", shard.ErrExists, name)
	}
	if err != nil {
		return nil, err
	}
	// A log left by a delete that was interrupted after its commit point.
	if err := e.c.DeleteLog(ctx, e.logName(name)); err != nil {
		return nil, fmt.Errorf("journal engine: create %q: removing an old log: %w", name, err)
	}
	if err := e.deleteManifest(ctx, name); err != nil {
		return nil, fmt.Errorf("journal engine: create %q: removing old offloaded ledgers: %w", name, err)
	}
	sh := newShard(e, rec, v)
	e.shards[name] = sh
	e.m.openShards.Inc()
	return sh, nil
}

// Open implements shard.Engine. A shard whose log ends in an open ledger
// (its writer crashed, or another node writes it) is taken over at once:
// the ledger is fenced and recovered, so that the watermarks are final.
// Otherwise the takeover waits for the first Append.
func (e *Engine) Open(ctx context.Context, name string) (shard.Shard, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, shard.ErrClosed
	}
	if s := e.shards[name]; s != nil {
		return s, nil
	}
	rec, err := schema.Get[shardRecord](ctx, e.kv, e.key(name))
	if errors.Is(err, meta.ErrNotFound) {
		return nil, fmt.Errorf("%w: %q", shard.ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	s := newShard(e, rec.Value, rec.Version)
	if err := s.open(ctx); err != nil {
		return nil, fmt.Errorf("journal engine: open %q: %w", name, err)
	}
	e.shards[name] = s
	e.m.openShards.Inc()
	return s, nil
}

// Delete implements shard.Engine: the shard record goes first (the commit
// point), then the log and its ledgers.
func (e *Engine) Delete(ctx context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return shard.ErrClosed
	}
	rec, err := schema.Get[shardRecord](ctx, e.kv, e.key(name))
	if errors.Is(err, meta.ErrNotFound) {
		return fmt.Errorf("%w: %q", shard.ErrNotFound, name)
	}
	if err != nil {
		return err
	}
	if s := e.shards[name]; s != nil {
		s.shutdown(ctx)
		delete(e.shards, name)
		e.m.openShards.Dec()
	}
	if _, err := e.kv.Delete(ctx, e.key(name), meta.IfVersion(rec.Version)); err != nil {
		return err
	}
	if err := e.c.DeleteLog(ctx, e.logName(name)); err != nil {
		return err
	}
	return e.deleteManifest(ctx, name)
}

// deleteManifest removes every offloaded ledger of shard name (records and
// objects).
func (e *Engine) deleteManifest(ctx context.Context, name string) error {
	rs, err := schema.ListValues[remoteLedger](ctx, e.kv, e.manifestPrefix(name))
	if err != nil {
		return err
	}
	_, err = e.deleteRemote(ctx, name, rs)
	return err
}

// List implements shard.Engine.
func (e *Engine) List(ctx context.Context) ([]string, error) {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return nil, shard.ErrClosed
	}
	recs, _, err := schema.List[shardRecord](ctx, e.kv, PrefixShards+e.o.Prefix, false)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(recs))
	for i, r := range recs {
		names[i] = r.Value.Name
	}
	return names, nil
}

// Close closes every open shard (closing their ledgers, so that the next
// open needs no recovery), then the Client if Options.OwnsClient.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	close(e.stopRetention)
	e.stopOffload() // a pass in the middle of a ledger's upload
	<-e.retentionDone
	<-e.offloadDone
	<-e.auditDone
	e.mu.Lock()
	defer e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), e.o.OpTimeout)
	defer cancel()
	var errs []error
	for name, s := range e.shards {
		errs = append(errs, s.shutdown(ctx))
		delete(e.shards, name)
		e.m.openShards.Dec()
	}
	if e.o.OwnsClient {
		errs = append(errs, e.c.Close())
	}
	return errors.Join(errs...)
}

// forget drops s from the open shards after s.Close.
func (e *Engine) forget(s *Shard) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.shards[s.name] == s {
		delete(e.shards, s.name)
		e.m.openShards.Dec()
	}
}
