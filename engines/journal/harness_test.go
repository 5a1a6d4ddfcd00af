package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// env is an in-process meta and real bookies, each served over gRPC on
// loopback and each its own node, on in-memory file systems.
type env struct {
	t     testing.TB
	kv    meta.KV
	dir   *client.StaticDirectory
	mu    sync.Mutex
	kills map[string]func() // bookie id → stop it as a crash would
}

func newEnv(t testing.TB, bookies int) *env { return newEnvOn(t, bookies, "") }

// newEnvOn is newEnv with the bookies under dataDir on disk ("" = in
// memory).
func newEnvOn(t testing.TB, bookies int, dataDir string) *env {
	t.Helper()
	fnet := meta.NewFaultNetwork()
	addr := "127.0.0.1:1"
	s, err := meta.Open(meta.Options{
		ID: 1, Voters: []meta.Voter{{ID: 1, Addr: addr}}, Dir: "/m", FS: vfs.NewMem(),
		Snapshots: raft.NewInmemSnapshotStore(), Transport: fnet.Transport(addr),
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond, LeaseCheckInterval: 10 * time.Millisecond,
		MinLeaseTTL: 10 * time.Millisecond, Logger: quiet, RaftLogLevel: "error",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := s.WaitLeader(wctx); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, kv: s, dir: client.NewStaticDirectory(), kills: map[string]func(){}}
	infos := make([]client.BookieInfo, bookies)
	var wg sync.WaitGroup
	for i := range bookies {
		fs, dir := vfs.FS(vfs.NewMem()), "/b"
		if dataDir != "" {
			fs, dir = vfs.Default, fmt.Sprintf("%s/b%d", dataDir, i)
		}
		wg.Go(func() { infos[i] = e.startBookie(fs, dir, fmt.Sprintf("n%d", i)) }) // Open takes ~1s: in parallel
	}
	wg.Wait()
	e.dir.Set(infos...)
	return e
}

func (e *env) startBookie(fs vfs.FS, dir, node string) client.BookieInfo {
	e.t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	addr := lis.Addr().String()
	b, err := bookie.Open(bookie.Options{FS: fs, Dir: dir, BookieID: addr, Cookies: &bookie.MemCookieStore{},
		JournalFileSize: 2 << 20, EntryLogSize: 16 << 20, CheckpointInterval: time.Hour})
	if err != nil {
		e.t.Fatal(err)
	}
	srv := bookierpc.NewServer(bookierpc.ServerOptions{})
	srv.Attach(b)
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(bookierpc.MaxMessageSize))
	journalv1.RegisterBookieServer(gs, srv)
	go gs.Serve(lis)
	var once sync.Once
	kill := func() {
		once.Do(func() {
			gs.Stop()
			srv.Detach()
			b.Close()
		})
	}
	e.mu.Lock()
	e.kills[addr] = kill
	e.mu.Unlock()
	e.t.Cleanup(kill)
	return client.BookieInfo{ID: addr, Addr: addr, Node: node}
}

// client returns a new ledger client over the env (closed at cleanup).
func (e *env) client() *client.Client {
	e.t.Helper()
	cl, err := client.New(client.Options{Meta: e.kv, Directory: e.dir, Logger: quiet,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 100 * time.Millisecond}, MinConnectTimeout: time.Second})}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cl.Close() })
	return cl
}

// engine opens an engine over the env with its own client.
func (e *env) engine(o Options) *Engine {
	e.t.Helper()
	o.Client, o.Meta = e.client(), e.kv
	if o.Logger == nil {
		o.Logger = quiet
	}
	en, err := Open(o)
	if err != nil {
		e.t.Fatal(err)
	}
	return en
}

// kill stops bookie id as a crash of its process would look to clients,
// and takes it out of the directory.
func (e *env) kill(id string) {
	e.t.Helper()
	e.mu.Lock()
	k := e.kills[id]
	e.mu.Unlock()
	k()
	bs, _ := e.dir.Bookies(context.Background())
	var live []client.BookieInfo
	for _, b := range bs {
		if b.ID != id {
			live = append(live, b)
		}
	}
	e.dir.Set(live...)
}

// lastLedger is the last ledger id handed out so far.
func (e *env) lastLedger(t testing.TB) uint64 {
	t.Helper()
	c, err := schema.Get[schema.Counter](context.Background(), e.kv, schema.KeyLedgerIDs)
	if errors.Is(err, meta.ErrNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return c.Value.Last
}
