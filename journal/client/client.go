package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// Options configure a Client.
type Options struct {
	// Meta holds ledger metadata (/ledgers/<id>, /ids/ledger). Required.
	Meta meta.KV
	// Directory lists the live bookies. Required.
	Directory BookieDirectory
	// AddTimeout fails a bookie (ensemble change) when an add to it stays
	// unanswered this long; until then a broken connection to it is
	// redialled and its adds resent. With no bookie to replace it, the
	// writer keeps reconnecting for another AddTimeout, then stops.
	// Default 5s.
	AddTimeout time.Duration
	// RequestTimeout bounds a read, LAC read, fence or LAC write; an
	// unanswered request is StatusUnknown (never a negative). Default 5s.
	RequestTimeout time.Duration
	// TickInterval is the writers' and readers' clock: explicit LAC of an
	// idle writer, add timeouts, LAC polling of tailing readers. Default
	// 10ms.
	TickInterval time.Duration
	// MaxInflight bounds a writer's adds not yet acknowledged; Append
	// blocks above it. Default 4096.
	MaxInflight int
	// DialOptions are added to every bookie connection's.
	DialOptions []grpc.DialOption
	// Logger receives ensemble changes, failures and recoveries. Default
	// slog.Default().
	Logger *slog.Logger
	// QuarantineTime is how long a bookie that answered STATUS_FAILED
	// (its storage failed) is kept out of new ensembles while others
	// suffice (quarantine.go). Default 10m; negative: never.
	QuarantineTime time.Duration
	// ReplaceMissingAfter makes a writer replace a bookie of its current
	// ensemble that the directory has not listed as live for this long,
	// whether or not an add to it failed: an idle writer otherwise keeps
	// a lost bookie in its last fragment, whose entries then have a copy
	// fewer until it adds again, and which re-replication leaves to the
	// writer. The change ends that fragment, so an Auditor re-replicates
	// it. 0: only failed adds replace a bookie.
	ReplaceMissingAfter time.Duration
	// Registerer receives quire_journal_client_add_stage_seconds (where
	// an append's latency goes: trace.go); nil registers nothing and
	// observes nothing.
	Registerer prometheus.Registerer
}

// EnsureDefaults fills zero fields with their defaults and returns o.
func (o *Options) EnsureDefaults() *Options {
	if o.AddTimeout <= 0 {
		o.AddTimeout = 5 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 5 * time.Second
	}
	if o.TickInterval <= 0 {
		o.TickInterval = 10 * time.Millisecond
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = 4096
	}
	if o.QuarantineTime == 0 {
		o.QuarantineTime = 10 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Validate reports missing options.
func (o *Options) Validate() error {
	if o.Meta == nil || o.Directory == nil {
		return errors.New("journal/client: Options.Meta and Options.Directory are required")
	}
	return nil
}

// Errors.
var (
	// ErrClosed is returned by the writer's Append after Close, and by the
	// Client's methods after Client.Close.
	ErrClosed = errors.New("journal/client: closed")
	// ErrFenced is returned for appends of a writer whose ledger was
	// fenced (recovered) or closed by someone else. It is ambiguous: the
	// entry may or may not survive the recovery.
	ErrFenced = ledger.ErrFenced
	// ErrRecoveryAborted is returned by Recover when recovery gave up
	// without closing the ledger (an unknown answer, too few bookies); it
	// changed nothing unsafe and may be retried.
	ErrRecoveryAborted = errors.New("journal/client: recovery aborted")
	// ErrNoSuchLedger is returned when a ledger's metadata is not in meta.
	ErrNoSuchLedger = errors.New("journal/client: no such ledger")
)

// Client creates, writes, reads and recovers ledgers: it runs
// journal/ledger's state machines over bookierpc and meta/schema. It is
// safe for concurrent use.
type Client struct {
	opts  Options
	store schema.Store
	log   *slog.Logger
	pick  atomic.Uint64 // rotates ensemble placement

	ctx    context.Context // ends on Close: the bookieConns stop
	cancel context.CancelFunc

	mu     sync.Mutex
	addrs  map[string]string // bookie id → address, from the directory
	conns  map[string]*bookierpc.Client
	adds   map[string]*bookieConn // the shared add stream per bookie
	closed bool

	stages *stageMetrics // nil without Options.Registerer

	qmu        sync.Mutex
	quarantine map[string]time.Time // bookie → until (quarantine.go)
}

// New returns a client.
func New(o Options) (*Client, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{opts: o, store: schema.Store{KV: o.Meta}, log: o.Logger, ctx: ctx, cancel: cancel,
		addrs: map[string]string{}, conns: map[string]*bookierpc.Client{}, adds: map[string]*bookieConn{},
		stages: newStageMetrics(o.Registerer), quarantine: map[string]time.Time{}}, nil
}

// Close closes the bookie connections. Writers and readers of the client
// must be closed first.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	adds := c.adds
	c.adds = map[string]*bookieConn{}
	c.mu.Unlock()
	c.cancel()
	for _, bc := range adds {
		<-bc.done
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for id, cc := range c.conns {
		errs = append(errs, cc.Close())
		delete(c.conns, id)
	}
	return errors.Join(errs...)
}

// isClosed reports whether Close was called.
func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// live lists the directory's bookies and remembers their addresses.
func (c *Client) live(ctx context.Context) ([]BookieInfo, error) {
	bs, err := c.opts.Directory.Bookies(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	for _, b := range bs {
		if a := b.addr(); c.addrs[b.ID] != a {
			if old := c.conns[b.ID]; old != nil {
				old.Close()
				delete(c.conns, b.ID)
			}
			c.addrs[b.ID] = a
		}
	}
	c.mu.Unlock()
	return bs, nil
}

// bookie returns the connection to bookie id (dialled lazily; a bookie the
// directory never listed is dialled at its id, which is its address).
func (c *Client) bookie(id string) (*bookierpc.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if cc := c.conns[id]; cc != nil {
		return cc, nil
	}
	addr := c.addrs[id]
	if addr == "" {
		addr = id
	}
	cc, err := bookierpc.Dial(addr, append([]grpc.DialOption{grpc.WithConnectParams(bookieConnectParams)}, c.opts.DialOptions...)...)
	if err != nil {
		return nil, err
	}
	c.conns[id] = cc
	return cc, nil
}

// addConn returns the shared add stream to bookie id, started on first
// use; nil once the Client is closed.
func (c *Client) addConn(id string) *bookieConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	bc := c.adds[id]
	if bc == nil {
		bc = &bookieConn{c: c, bookie: id, ctx: c.ctx, notify: make(chan struct{}, 1), done: make(chan struct{})}
		c.adds[id] = bc
		go bc.run()
	}
	return bc
}

// bookieConnectParams is the bookie connections' reconnect backoff unless
// Options.DialOptions set another: gRPC's default (1s growing to 120s)
// would leave a writer's link to a restarted bookie failing fast for
// longer than the add timeout after the bookie is back.
var bookieConnectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	MinConnectTimeout: 2 * time.Second,
}

// CreateLedger picks an ensemble of e live bookies on distinct nodes,
// allocates a ledger id and records the ledger OPEN in meta, and returns
// its writer.
func (c *Client) CreateLedger(ctx context.Context, e, qw, qa int) (*LedgerWriter, error) {
	if !(e >= qw && qw >= qa && qa >= 1) {
		return nil, fmt.Errorf("%w: need E >= Qw >= Qa >= 1, have %d/%d/%d", ledger.ErrInvalid, e, qw, qa)
	}
	live, err := c.live(ctx)
	if err != nil {
		return nil, err
	}
	start := int(c.pick.Add(1) - 1)
	ens, err := pickEnsemble(c.healthy(live), e, start)
	if errors.Is(err, ErrNotEnoughBookies) {
		ens, err = pickEnsemble(live, e, start) // quarantined ones too, rather than none
	}
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(ens))
	for i, b := range ens {
		ids[i] = b.ID
	}
	rec, err := c.store.CreateLedger(ctx, schema.Ledger{Ensemble: e, WriteQuorum: qw, AckQuorum: qa,
		Fragments: []schema.Fragment{{FirstEntry: 0, Bookies: ids}}})
	if err != nil {
		return nil, fmt.Errorf("journal/client: create ledger: %w", err)
	}
	c.log.Debug("ledger created", "ledger", rec.Value.ID, "ensemble", ids)
	return c.newWriter(rec, live)
}

// Metadata returns a ledger's metadata as stored in meta.
func (c *Client) Metadata(ctx context.Context, id uint64) (ledger.Metadata, error) {
	rec, err := c.store.Ledger(ctx, id)
	if errors.Is(err, meta.ErrNotFound) {
		return ledger.Metadata{}, fmt.Errorf("%w: %d", ErrNoSuchLedger, id)
	}
	if err != nil {
		return ledger.Metadata{}, err
	}
	return ToMetadata(rec), nil
}

// cas carries out a CASMetadata effect: on a version mismatch it reads the
// ledger back; if what is stored is what this CAS wrote (an earlier
// attempt whose answer was lost), it is a success. Errors other than a
// mismatch are retried until ctx ends.
func (c *Client) cas(ctx context.Context, eff ledger.CASMetadata, createdAt time.Time) (ledger.CASResult, error) {
	backoff := 10 * time.Millisecond
	for {
		v, err := c.store.CASLedger(ctx, eff.Expected, FromMetadata(eff.New, createdAt))
		if err == nil {
			return ledger.CASResult{OK: true, Version: v}, nil
		}
		if errors.Is(err, meta.ErrVersionMismatch) {
			rec, rerr := c.store.Ledger(ctx, eff.New.ID)
			if rerr == nil {
				cur := ToMetadata(rec)
				if sameMetadata(cur, eff.New) {
					return ledger.CASResult{OK: true, Version: cur.Version}, nil
				}
				return ledger.CASResult{Current: cur}, nil
			}
			err = rerr
		}
		c.log.Warn("journal/client: ledger metadata CAS failed, retrying", "ledger", eff.New.ID, "err", err)
		select {
		case <-ctx.Done():
			return ledger.CASResult{}, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// statusOf maps a bookierpc answer to what the state machines need.
func statusOf(err error) ledger.Status {
	switch bookierpc.StatusOf(err) {
	case journalv1.Status_STATUS_OK:
		return ledger.StatusOK
	case journalv1.Status_STATUS_NO_SUCH_ENTRY, journalv1.Status_STATUS_NO_SUCH_LEDGER:
		return ledger.StatusNoSuchEntry
	case journalv1.Status_STATUS_FENCED:
		return ledger.StatusFenced
	}
	return ledger.StatusUnknown
}

// mailbox is an unbounded queue feeding one event loop: network callbacks
// never block on a busy loop (which would stall the gRPC receive path the
// loop's own sends depend on). Memory is bounded by MaxInflight upstream.
type mailbox[T any] struct {
	mu     sync.Mutex
	items  []T
	closed bool
	notify chan struct{}
}

func newMailbox[T any]() *mailbox[T] { return &mailbox[T]{notify: make(chan struct{}, 1)} }

// push queues x; false once the mailbox is closed (x was not queued).
func (m *mailbox[T]) push(x T) bool {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return false
	}
	wake := len(m.items) == 0
	m.items = append(m.items, x)
	m.mu.Unlock()
	if wake {
		signal(m.notify)
	}
	return true
}

// signal leaves a wake-up in ch (capacity 1) unless one is there. Queues
// signal only when they stop being empty: their consumer takes the whole
// queue after every wake-up, so a queue that was not empty has a wake-up
// pending or a take coming that will see the new item.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// close refuses further pushes and returns what is still queued.
func (m *mailbox[T]) close() []T {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	items := m.items
	m.items = nil
	return items
}

func (m *mailbox[T]) take(buf []T) []T { return takeAll(&m.mu, &m.items, buf) }

// takeAll moves *items (guarded by mu) into buf, reused, keeping the
// backing array of *items for the next appends.
func takeAll[T any](mu *sync.Mutex, items *[]T, buf []T) []T {
	mu.Lock()
	buf = append(buf[:0], *items...)
	clear(*items)
	*items = (*items)[:0]
	mu.Unlock()
	return buf
}
