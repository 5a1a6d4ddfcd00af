package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/meta/schema"
)

func serviceHealth(t *testing.T, addr, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("health of %q: %v", service, err)
	}
	return resp.Status
}

// With the bookie role the node serves journal.v1.Bookie on its inner gRPC
// server, and what it acknowledged survives a restart of the node.
func TestNodeBookie(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	n := startNode(t, cfg, nil)
	addr := n.GRPCAddr().String()
	if st := serviceHealth(t, addr, "journal.v1.Bookie"); st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("bookie health = %v", st)
	}
	c, err := bookierpc.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	results := make(chan bookierpc.AddResult, 100)
	s, err := c.AddStream(ctx, func(r bookierpc.AddResult) { results <- r })
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 6<<20) // above gRPC's default 4 MiB message limit
	for i := range big {
		big[i] = byte(i)
	}
	for e := range uint64(10) {
		p := []byte{byte(e)}
		if e == 9 {
			p = big
		}
		if err := s.Add(bookierpc.Add{Ledger: 1, Entry: e, LAC: int64(e) - 1, Payload: p}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if r := <-results; r.Err != nil {
			t.Errorf("add %d: %v", r.Entry, r.Err)
		}
	}
	if _, err := c.Fence(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got, err := c.ReadEntry(ctx, 1, 9, false); err != nil || len(got) != len(big) || got[12345] != big[12345] {
		t.Errorf("read of the 6 MiB entry: %d bytes, %v", len(got), err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bookie", "COOKIE")); err != nil {
		t.Error(err)
	}
	// The cookie store is meta.
	if _, err := os.Stat(filepath.Join(dir, "bookie-cookies.json")); !os.IsNotExist(err) {
		t.Errorf("bookie-cookies.json with meta as the cookie store: %v", err)
	}
	if c, err := schema.Get[bookie.Cookie](ctx, n.Meta(), schema.CookieKey("127.0.0.1:1228")); err != nil || c.Value.BookieID != "127.0.0.1:1228" || c.Value.InstanceID == "" {
		t.Errorf("cookie in meta = %+v, %v", c, err)
	}
	if err := n.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	n = startNode(t, cfg, nil)
	c2, err := bookierpc.Dial(n.GRPCAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got, err := c2.ReadEntry(ctx, 1, 3, false); err != nil || !slices.Equal(got, []byte{3}) {
		t.Errorf("entry 3 after restart: %v, %v", got, err)
	}
	if lac, err := c2.ReadLAC(ctx, 1, false); err != nil || lac != 8 {
		t.Errorf("LAC after restart = %d, %v; want 8", lac, err)
	}
	s, err = c2.AddStream(ctx, func(r bookierpc.AddResult) { results <- r })
	if err != nil {
		t.Fatal(err)
	}
	s.Add(bookierpc.Add{Ledger: 1, Entry: 10, LAC: 9, Payload: []byte("late")})
	s.Close()
	if r := <-results; !errors.Is(r.Err, bookie.ErrLedgerFenced) {
		t.Errorf("add after the fence and a restart: %v, want FENCED", r.Err)
	}
}

// [bookie] enabled = false: no bookie role, no bookie directory, and the
// service is not registered (UNIMPLEMENTED: no answer, never a status).
func TestNodeWithoutBookie(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.Bookie.Enabled = false
	n := startNode(t, cfg, nil)
	cl, err := adminapi.NewClient(n.AdminAddr().String()).Cluster(context.Background())
	if err != nil || !slices.Equal(cl.Nodes[0].Roles, []string{"meta", "broker"}) {
		t.Errorf("cluster = %+v, %v", cl, err)
	}
	c, err := bookierpc.Dial(n.GRPCAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ReadEntry(context.Background(), 1, 0, false); status.Code(err) != codes.Unimplemented {
		t.Errorf("read without a bookie: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bookie")); !os.IsNotExist(err) {
		t.Errorf("bookie directory exists: %v", err)
	}
}

// A wiped bookie directory refuses to start: the cookie store remembers it.
func TestNodeBookieWiped(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	n := startNode(t, cfg, nil)
	if err := n.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "bookie")); err != nil {
		t.Fatal(err)
	}
	n = newNode(t, cfg, nil)
	err := n.Start(context.Background())
	if !errors.Is(err, bookie.ErrCookieMismatch) || !strings.Contains(err.Error(), "start bookie") || !strings.Contains(err.Error(), "has no cookie") {
		t.Fatalf("start on a wiped bookie dir: %v", err)
	}
	// The failed start released everything: the data dir is unlocked.
	cfg.Bookie.Enabled = false
	startNode(t, cfg, nil)
}
