package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"google.golang.org/grpc"

	"github.com/quiremq/quire/internal/config"
	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
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
	return nil
}

func (c *bookieComponent) Stop(context.Context) error {
	if c.bookie == nil {
		return nil
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
