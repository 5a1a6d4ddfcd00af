package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/quiremq/quire/internal/config"
	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// Where the node's bookie keeps its data, under data_dir.
const bookieDir = "bookie"

// bookieComponent runs a journal/bookie and serves it on the inner gRPC
// server (journal.v1.Bookie, registered when the node is built; see
// grpcServer). Start opens the bookie (replaying its journal) and attaches
// it; Stop closes it first — every add in flight is answered — and then
// detaches it, which ends the open add streams.
type bookieComponent struct {
	opts   bookie.Options
	srv    *bookierpc.Server
	grpc   *grpcServer
	log    *slog.Logger
	bookie *bookie.Bookie

	// Garbage collection (gcLoop), with gcMeta set.
	gcMeta     func() meta.KV // nil before meta starts
	gcInterval time.Duration
	gcStop     context.CancelFunc
	gcDone     chan struct{}
	gcDeleted  prometheus.Counter
}

// newBookieComponent builds the bookie component and registers its service
// on g (before g serves).
func newBookieComponent(opts bookie.Options, g *grpcServer, log *slog.Logger) *bookieComponent {
	c := &bookieComponent{opts: opts, grpc: g, log: log,
		srv: bookierpc.NewServer(bookierpc.ServerOptions{Registerer: opts.Registerer})}
	g.register(&journalv1.Bookie_ServiceDesc, c.srv)
	return c
}

func (c *bookieComponent) Name() string { return "bookie" }

func (c *bookieComponent) Start(context.Context) error {
	b, err := bookie.Open(c.opts)
	if err != nil {
		return err
	}
	c.bookie = b
	c.srv.Attach(b)
	c.grpc.setServing(journalv1.Bookie_ServiceDesc.ServiceName, true)
	o := c.opts
	o.EnsureDefaults()
	c.log.Info("bookie open", "bookie_id", o.BookieID, "dir", o.Dir, "journal_dir", o.JournalDir,
		"max_group_wait", o.MaxGroupWait, "max_group_bytes", o.MaxGroupBytes)
	if c.gcMeta != nil && c.gcInterval > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		c.gcStop, c.gcDone = cancel, make(chan struct{})
		go c.gcLoop(ctx, b)
	}
	return nil
}

// collectGarbage makes the bookie delete, every interval, the ledgers it
// holds that meta no longer has (see gcPass); reg receives
// quire_bookie_gc_deleted_ledgers_total.
func (c *bookieComponent) collectGarbage(kv func() meta.KV, interval time.Duration, reg prometheus.Registerer) {
	c.gcMeta, c.gcInterval = kv, interval
	c.gcDeleted = prometheus.NewCounter(prometheus.CounterOpts{Name: "quire_bookie_gc_deleted_ledgers_total",
		Help: "Ledgers the bookie deleted because meta no longer had them (deleted while the bookie was away)."})
	if reg != nil {
		_ = reg.Register(c.gcDeleted)
	}
}

func (c *bookieComponent) gcLoop(ctx context.Context, b *bookie.Bookie) {
	defer close(c.gcDone)
	t := time.NewTicker(c.gcInterval)
	defer t.Stop()
	var suspects map[uint64]bool
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next, err := c.gcPass(ctx, b, suspects)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("bookie garbage collection: pass failed", "err", err)
			}
			continue
		}
		suspects = next
	}
}

// leftover reports whether this bookie's copy of ledger l is garbage:
// l is CLOSED, no fragment names self, and no re-replication is copying
// to self (schema.RereplicaKey, under the copier's lease). An open ledger
// or one in recovery may name self at its next CAS (a writer's ensemble
// change, a recovery's write-back), so it is never garbage here; a
// re-replication announces its copies before the first and keeps the
// announcement until its CAS names self. (A ledger deleted while this
// bookie was away, or a bookie replaced after it was lost: its copies.)
func (c *bookieComponent) leftover(ctx context.Context, kv meta.KV, l schema.Ledger, self string) bool {
	if l.State != schema.LedgerState(ledger.StateClosed) {
		return false
	}
	for _, f := range l.Fragments {
		if slices.Contains(f.Bookies, self) {
			return false
		}
	}
	_, err := kv.Get(ctx, schema.RereplicaKey(l.ID, self))
	return errors.Is(err, meta.ErrNotFound)
}

// gcPass deletes the ledgers b holds that meta has no record of, or whose
// copy here is a leftover, and that the previous pass (suspects) found so
// too, and returns the ones found so now. The bookie's list is read before meta's: a ledger's
// record is created before any of its entries is added, and ledger ids are
// never reused, so a ledger the bookie held before meta was read and that
// meta does not have was deleted (a bookie that was down or unreachable
// missed the deletion, journal/client.DeleteLedger). The second pass is a
// margin for a read of meta that lags (a follower's): a ledger created
// just before the first pass is there by the second.
func (c *bookieComponent) gcPass(ctx context.Context, b *bookie.Bookie, suspects map[uint64]bool) (map[uint64]bool, error) {
	held := b.Ledgers()
	if len(held) == 0 {
		return nil, nil
	}
	kv := c.gcMeta()
	if kv == nil {
		return suspects, errors.New("meta is not running")
	}
	recs, _, err := schema.List[schema.Ledger](ctx, kv, schema.PrefixLedgers, false)
	if err != nil {
		return suspects, err
	}
	known := make(map[uint64]schema.Ledger, len(recs))
	for _, r := range recs {
		known[r.Value.ID] = r.Value
	}
	self := c.opts.BookieID
	missing := map[uint64]bool{}
	var deleted []uint64
	for _, id := range held {
		if l, ok := known[id]; ok {
			if !c.leftover(ctx, kv, l, self) {
				continue
			}
		}
		if !suspects[id] {
			missing[id] = true
			continue
		}
		if err := b.DeleteLedger(id); err != nil {
			return missing, fmt.Errorf("deleting ledger %d: %w", id, err)
		}
		deleted = append(deleted, id)
		c.gcDeleted.Inc()
	}
	if len(deleted) > 0 {
		c.log.Info("bookie garbage collection: deleted ledgers meta no longer has or no longer places here", "ledgers", deleted)
	}
	return missing, nil
}

func (c *bookieComponent) Stop(context.Context) error {
	if c.bookie == nil {
		return nil
	}
	if c.gcStop != nil {
		c.gcStop()
		<-c.gcDone
		c.gcStop = nil
	}
	c.grpc.setServing(journalv1.Bookie_ServiceDesc.ServiceName, false)
	err := c.bookie.Close()
	c.srv.Detach()
	c.bookie = nil
	if err != nil && !errors.Is(err, bookie.ErrClosed) {
		return fmt.Errorf("close bookie: %w", err)
	}
	return nil
}

// grpcServerOptions are the inner gRPC server's options: the bookie
// transport's (larger socket buffers and flow-control windows, a buffer
// pool that does not zero what it hands out: bookierpc.GRPCServerOptions),
// with a receive limit of room for the bookie's largest entry and the
// message around it (gRPC's default is 4 MiB).
func grpcServerOptions(maxEntry int) []grpc.ServerOption {
	return append(bookierpc.GRPCServerOptions(), grpc.MaxRecvMsgSize(max(4<<20, maxEntry+64<<10)))
}

// nodeBookieOptions are the bookie options of a node's [bookie] section.
func nodeBookieOptions(cfg *config.Config, fs vfs.FS, dataDir string) (bookie.Options, error) {
	bc := cfg.Bookie
	id := ""
	if vs, err := cfg.Voters(); err == nil {
		for _, v := range vs {
			if v.ID == cfg.NodeID {
				id = v.Addr
			}
		}
	}
	if id == "" {
		return bookie.Options{}, fmt.Errorf("bookie: node %d is not in meta_addrs, so it has no address to be its bookie id", cfg.NodeID)
	}
	jdir := bc.JournalDir
	if jdir != "" {
		var err error
		if jdir, err = filepath.Abs(jdir); err != nil {
			return bookie.Options{}, fmt.Errorf("bookie.journal_dir %q: %w", bc.JournalDir, err)
		}
	}
	// bc.CookieStore "" leaves Cookies nil: the node fills in meta's store.
	var cookies bookie.CookieStore
	if bc.CookieStore != "" {
		path, err := filepath.Abs(bc.CookieStore)
		if err != nil {
			return bookie.Options{}, fmt.Errorf("bookie.cookie_store %q: %w", bc.CookieStore, err)
		}
		cookies = bookie.NewFileCookieStore(fs, path)
	}
	return bookie.Options{
		FS:            fs,
		Dir:           fs.PathJoin(dataDir, bookieDir),
		JournalDir:    jdir,
		BookieID:      id,
		Cookies:       cookies,
		MaxGroupWait:  bc.MaxGroupWait.Std(),
		MaxGroupBytes: bc.MaxGroupBytes,
		MaxEntrySize:  bc.MaxEntrySize,
	}, nil
}
