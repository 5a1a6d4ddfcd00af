package client

import (
	"bytes"
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
	"github.com/quiremq/quire/journal/ledger"
	"github.com/quiremq/quire/meta"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// newMeta starts a single-node meta in process on an in-memory FS.
func newMeta(t testing.TB) meta.KV {
	t.Helper()
	net := meta.NewFaultNetwork()
	addr := "127.0.0.1:1"
	s, err := meta.Open(meta.Options{
		ID: 1, Voters: []meta.Voter{{ID: 1, Addr: addr}}, Dir: "/m", FS: vfs.NewMem(),
		Snapshots: raft.NewInmemSnapshotStore(), Transport: net.Transport(addr),
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond, LeaseCheckInterval: 10 * time.Millisecond,
		MinLeaseTTL: 10 * time.Millisecond,
		Logger:      quiet, RaftLogLevel: "error",
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
	return s
}

// testBookie is a real bookie served over gRPC on loopback.
type testBookie struct {
	t    testing.TB
	info BookieInfo
	opts bookie.Options
	mu   sync.Mutex
	b    *bookie.Bookie
	srv  *bookierpc.Server
	gs   *grpc.Server
	up   bool
}

func startBookie(t testing.TB, fs vfs.FS, dir, node string) *testBookie {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	tb := &testBookie{t: t, info: BookieInfo{ID: addr, Addr: addr, Node: node}, opts: bookie.Options{
		FS: fs, Dir: dir, BookieID: addr, Cookies: &bookie.MemCookieStore{},
		JournalFileSize: 2 << 20, EntryLogSize: 16 << 20, CheckpointInterval: time.Hour,
	}}
	tb.serve(lis)
	t.Cleanup(tb.kill)
	return tb
}

func (tb *testBookie) serve(lis net.Listener) {
	tb.t.Helper()
	b, err := bookie.Open(tb.opts)
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.b = b
	tb.srv = bookierpc.NewServer(bookierpc.ServerOptions{})
	tb.srv.Attach(b)
	tb.gs = grpc.NewServer(grpc.MaxRecvMsgSize(bookierpc.MaxMessageSize))
	journalv1.RegisterBookieServer(tb.gs, tb.srv)
	go tb.gs.Serve(lis)
	tb.up = true
}

// kill stops the bookie as a crash of its process would look to clients:
// connections drop, nothing more is answered.
func (tb *testBookie) kill() {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if !tb.up {
		return
	}
	tb.up = false
	tb.gs.Stop()
	tb.srv.Detach()
	tb.b.Close()
}

// restart serves the bookie again on the same address and data.
func (tb *testBookie) restart() {
	tb.t.Helper()
	var lis net.Listener
	var err error
	for range 50 {
		if lis, err = net.Listen("tcp", tb.info.Addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.serve(lis)
}

type cluster struct {
	t       testing.TB
	kv      meta.KV
	bookies []*testBookie
	dir     *StaticDirectory
}

// newCluster starts meta and n bookies (each its own node) on in-memory
// file systems (dataDir "" ) or under dataDir on disk.
func newCluster(t testing.TB, n int, dataDir string) *cluster {
	t.Helper()
	c := &cluster{t: t, kv: newMeta(t), dir: NewStaticDirectory()}
	c.bookies = make([]*testBookie, n)
	var wg sync.WaitGroup
	for i := range n {
		fs, dir := vfs.FS(vfs.NewMem()), "/b"
		if dataDir != "" {
			fs, dir = vfs.Default, fmt.Sprintf("%s/b%d", dataDir, i)
		}
		wg.Go(func() { c.bookies[i] = startBookie(t, fs, dir, fmt.Sprintf("n%d", i)) }) // Open takes ~1s: in parallel
	}
	wg.Wait()
	var infos []BookieInfo
	for _, tb := range c.bookies {
		infos = append(infos, tb.info)
	}
	c.dir.Set(infos...)
	return c
}

func (c *cluster) client(o Options) *Client {
	c.t.Helper()
	o.Meta, o.Directory = c.kv, c.dir
	if o.Logger == nil {
		o.Logger = quiet
	}
	o.DialOptions = append(o.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 100 * time.Millisecond}, MinConnectTimeout: time.Second}))
	cl, err := New(o)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

func (c *cluster) byID(id string) *testBookie {
	for _, b := range c.bookies {
		if b.info.ID == id {
			return b
		}
	}
	return nil
}

// history records what a writer was asked to append and what it acked.
type history struct {
	mu        sync.Mutex
	attempted map[int64][]byte // entry → data of every append that got an entry id
	acked     map[int64][]byte
	maxAcked  int64
}

func newHistory() *history {
	return &history{attempted: map[int64][]byte{}, acked: map[int64][]byte{}, maxAcked: -1}
}

// record waits for f and records its outcome.
func (h *history) record(f *Future, data []byte) error {
	e, err := f.Result()
	h.mu.Lock()
	defer h.mu.Unlock()
	if e >= 0 {
		h.attempted[e] = data
	}
	if err == nil {
		if old, ok := h.acked[e]; ok {
			return fmt.Errorf("entry %d acked twice (%q, %q)", e, old, data)
		}
		h.acked[e] = data
		h.maxAcked = max(h.maxAcked, e)
	}
	return err
}

func payload(i int, size int) []byte {
	p := bytes.Repeat([]byte{byte(i)}, size)
	copy(p, fmt.Sprintf("entry-%d|", i))
	return p
}

// checkInvariants reads closed ledger id back and checks DESIGN.md's
// journal invariants against h: no acknowledged entry lost or changed; the
// closed ledger's last entry ≥ every acknowledged entry; entries read back
// in write order (dense, ascending); no two values at one offset (every
// bookie of each entry's write set that holds it holds the same bytes,
// and each entry is one the writer attempted at that offset).
func checkInvariants(t testing.TB, cl *Client, id uint64, h *history) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	md, err := cl.Metadata(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if md.State != ledger.StateClosed {
		t.Fatalf("ledger %d is %s, want CLOSED", id, md.State)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if md.LastEntry < h.maxAcked {
		t.Fatalf("closed last entry %d < highest acknowledged entry %d", md.LastEntry, h.maxAcked)
	}
	r, err := cl.OpenForRead(ctx, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	want := int64(0)
	for {
		e, data, err := r.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read after entry %d: %v", want-1, err)
		}
		if e != want {
			t.Fatalf("read entry %d, want %d (read order = write order)", e, want)
		}
		if a, ok := h.acked[e]; ok && !bytes.Equal(a, data) {
			t.Fatalf("acknowledged entry %d changed: %.20q, read %.20q", e, a, data)
		}
		if a, ok := h.attempted[e]; !ok || !bytes.Equal(a, data) {
			t.Fatalf("entry %d: read %.20q, which was never appended at this offset", e, data)
		}
		for _, b := range md.WriteSetOf(e) {
			got, err := cl.readEntry(ctx, b, id, e, false)
			if err == nil && !bytes.Equal(got, data) {
				t.Fatalf("entry %d: bookie %s holds %.20q, another %.20q", e, b, got, data)
			}
		}
		want++
	}
	if want-1 != md.LastEntry {
		t.Fatalf("read up to %d, closed last entry %d", want-1, md.LastEntry)
	}
	for e := range h.acked {
		if e > md.LastEntry {
			t.Fatalf("acknowledged entry %d lost (last entry %d)", e, md.LastEntry)
		}
	}
	return md.LastEntry
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
