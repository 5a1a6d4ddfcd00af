package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"

	journalv1 "github.com/quiremq/quire/internal/proto/journal/v1"
	"github.com/quiremq/quire/internal/vfs"
	"github.com/quiremq/quire/journal/bookie"
	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/schema"
)

// cluster is what the benchmark runs on: a meta for ledger metadata and a
// directory of bookies, in process or remote.
type cluster struct {
	dir     string // the run's directory
	meta    *meta.Server
	bookies []*localBookie // in-process bookies (none with --bookie-addrs)
	infos   []client.BookieInfo
	metrics []string // remote bookies' metrics URLs
}

// localBookie is a bookie served over gRPC on loopback in this process.
type localBookie struct {
	b   *bookie.Bookie
	srv *bookierpc.Server
	gs  *grpc.Server
	reg *prometheus.Registry
}

// syncBytesMetric is the bookies' histogram of journal bytes per fdatasync.
const syncBytesMetric = "quire_bookie_journal_sync_bytes"

// syncTimeMetric and groupTimeMetric are the bookies' histograms of
// journal fdatasync times and of group latencies (first add queued to
// acknowledgement).
const (
	syncTimeMetric  = "quire_bookie_journal_sync_seconds"
	groupTimeMetric = "quire_bookie_journal_group_seconds"
	addTimeMetric   = "quire_bookie_add_seconds" // an add handed to the bookie to its acknowledgement
)

// addRequestsMetric and addsMetric count the bookies' AddEntries request
// messages and the adds in them (bookierpc).
const (
	addRequestsMetric = "quire_bookie_rpc_add_requests_total"
	addsMetric        = "quire_bookie_rpc_adds_total"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// startCluster makes the run's directory under c.dataDir and starts meta
// and, without --bookie-addrs, the bookies.
func startCluster(ctx context.Context, c *config) (_ *cluster, err error) {
	parent := c.dataDir
	if parent == "" {
		parent = os.TempDir()
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, "journal-bench-")
	if err != nil {
		return nil, err
	}
	cl := &cluster{dir: dir, metrics: c.bookieMetrics}
	defer func() {
		if err != nil {
			cl.stop()
		}
	}()
	if cl.meta, err = startMeta(ctx, filepath.Join(dir, "meta")); err != nil {
		return nil, err
	}
	if len(c.bookieAddrs) > 0 {
		// The bookies may also serve a cluster whose meta numbers its
		// ledgers from 1: ours start far above, so that adds never land
		// in one of its ledgers.
		if _, err := schema.Put(ctx, cl.meta, schema.KeyLedgerIDs, schema.Counter{Last: externalLedgerBase}); err != nil {
			return nil, fmt.Errorf("meta: %w", err)
		}
		for _, a := range c.bookieAddrs {
			cl.infos = append(cl.infos, client.BookieInfo{ID: a, Addr: a})
		}
		return cl, nil
	}
	cl.bookies = make([]*localBookie, c.bookies)
	cl.infos = make([]client.BookieInfo, c.bookies)
	errs := make([]error, c.bookies)
	var wg sync.WaitGroup
	for i := range c.bookies {
		wg.Go(func() { // opening a bookie takes a while: in parallel
			cl.bookies[i], cl.infos[i], errs[i] = startBookie(c, filepath.Join(dir, fmt.Sprintf("bookie-%d", i)), fmt.Sprintf("bookie-%d", i))
		})
	}
	wg.Wait()
	return cl, errors.Join(errs...)
}

// externalLedgerBase is where ledger ids start with --bookie-addrs.
const externalLedgerBase = 1 << 62

// startMeta runs a one-voter meta on disk. Raft traffic never leaves the
// node, so its transport is the in-memory one.
func startMeta(ctx context.Context, dir string) (*meta.Server, error) {
	const addr = "127.0.0.1:1"
	s, err := meta.Open(meta.Options{
		ID: 1, Voters: []meta.Voter{{ID: 1, Addr: addr}}, Dir: dir, FS: vfs.Default,
		Transport:        meta.NewFaultNetwork().Transport(addr),
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
		LeaderLeaseTimeout: 50 * time.Millisecond,
		Logger:             quietLog, RaftLogLevel: "error",
	})
	if err != nil {
		return nil, fmt.Errorf("meta: %w", err)
	}
	if err := s.Start(ctx); err != nil {
		return nil, fmt.Errorf("meta: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.WaitLeader(wctx); err != nil {
		s.Stop(context.Background())
		return nil, fmt.Errorf("meta: no leader: %w", err)
	}
	return s, nil
}

func startBookie(c *config, dir, id string) (*localBookie, client.BookieInfo, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, client.BookieInfo{}, err
	}
	reg := prometheus.NewRegistry()
	b, err := bookie.Open(bookie.Options{
		FS: vfs.Default, Dir: dir, BookieID: id,
		Cookies:       bookie.NewFileCookieStore(vfs.Default, dir+".cookies.json"),
		Registerer:    reg,
		IdleGroupWait: c.idleGroupWait,
	})
	if err != nil {
		lis.Close()
		return nil, client.BookieInfo{}, fmt.Errorf("bookie %s: %w", id, err)
	}
	lb := &localBookie{b: b, reg: reg, srv: bookierpc.NewServer(bookierpc.ServerOptions{Registerer: reg}),
		gs: grpc.NewServer(bookierpc.GRPCServerOptions()...)}
	lb.srv.Attach(b)
	journalv1.RegisterBookieServer(lb.gs, lb.srv)
	go lb.gs.Serve(lis)
	addr := lis.Addr().String()
	return lb, client.BookieInfo{ID: id, Addr: addr}, nil
}

// stop stops the bookies and meta and removes the run's directory.
func (cl *cluster) stop() {
	for _, lb := range cl.bookies {
		if lb == nil {
			continue
		}
		lb.gs.Stop()
		lb.srv.Detach()
		lb.b.Close()
	}
	if cl.meta != nil {
		cl.meta.Stop(context.Background())
	}
	os.RemoveAll(cl.dir)
}

// syncStats are the bookies' journal fdatasyncs so far: how many, and the
// bytes they wrote; and the AddEntries request messages they received and
// the adds in them.
type syncStats struct {
	syncs, bytes   float64
	requests, adds float64
	// In-process bookies only: their journal fdatasync times, group
	// latencies (first add queued to acknowledgement) and add latencies,
	// bucket counts summed over the bookies (nil for remote bookies).
	syncTime, groupTime, addTime promBuckets
}

func (s syncStats) sub(o syncStats) syncStats {
	return syncStats{s.syncs - o.syncs, s.bytes - o.bytes, s.requests - o.requests, s.adds - o.adds,
		s.syncTime.sub(o.syncTime), s.groupTime.sub(o.groupTime), s.addTime.sub(o.addTime)}
}

// promBuckets are a Prometheus histogram's cumulative bucket counts.
type promBuckets struct {
	upper []float64 // seconds
	count []uint64  // cumulative
}

func (b *promBuckets) add(h interface {
	GetBucket() []*dto.Bucket
}) {
	bs := h.GetBucket()
	if b.upper == nil {
		for _, x := range bs {
			b.upper = append(b.upper, x.GetUpperBound())
		}
		b.count = make([]uint64, len(bs))
	}
	for i, x := range bs {
		if i < len(b.count) {
			b.count[i] += x.GetCumulativeCount()
		}
	}
}

func (b promBuckets) sub(o promBuckets) promBuckets {
	if len(o.count) != len(b.count) {
		return b
	}
	d := promBuckets{upper: b.upper, count: make([]uint64, len(b.count))}
	for i := range b.count {
		d.count[i] = b.count[i] - o.count[i]
	}
	return d
}

// quantileMs is the q quantile in ms, interpolated linearly inside its
// bucket (so only as precise as the buckets: a factor of 2), or nil
// without samples.
func (b promBuckets) quantileMs(q float64) *float64 {
	if len(b.count) == 0 || b.count[len(b.count)-1] == 0 {
		return nil
	}
	rank := q * float64(b.count[len(b.count)-1])
	lo, below := 0.0, uint64(0)
	for i, c := range b.count {
		if float64(c) >= rank {
			v := lo
			if c > below {
				v += (b.upper[i] - lo) * (rank - float64(below)) / float64(c-below)
			}
			v *= 1e3
			return &v
		}
		lo, below = b.upper[i], c
	}
	v := lo * 1e3 // beyond the last bucket: its bound
	return &v
}

// addsPerRequest is the mean adds per AddEntries request message, or nil
// when no bookie reported them.
func (s syncStats) addsPerRequest() *float64 {
	if s.requests <= 0 {
		return nil
	}
	v := s.adds / s.requests
	return &v
}

// bytesPerSync is the mean journal bytes per fdatasync (0 without syncs).
func (s syncStats) bytesPerSync() float64 {
	if s.syncs <= 0 {
		return 0
	}
	return s.bytes / s.syncs
}

// syncStats adds up the journal syncs of every bookie.
func (cl *cluster) syncStats(ctx context.Context) (syncStats, error) {
	var total syncStats
	for _, lb := range cl.bookies {
		mfs, err := lb.reg.Gather()
		if err != nil {
			return total, err
		}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				switch mf.GetName() {
				case syncBytesMetric:
					total.syncs += float64(m.GetHistogram().GetSampleCount())
					total.bytes += m.GetHistogram().GetSampleSum()
				case syncTimeMetric:
					total.syncTime.add(m.GetHistogram())
				case groupTimeMetric:
					total.groupTime.add(m.GetHistogram())
				case addTimeMetric:
					total.addTime.add(m.GetHistogram())
				case addRequestsMetric:
					total.requests += m.GetCounter().GetValue()
				case addsMetric:
					total.adds += m.GetCounter().GetValue()
				}
			}
		}
	}
	for _, u := range cl.metrics {
		s, err := scrapeSyncStats(ctx, u)
		if err != nil {
			return total, err
		}
		total.syncs += s.syncs
		total.bytes += s.bytes
	}
	return total, nil
}

// scrapeSyncStats reads the sync histogram's _sum and _count from a
// Prometheus text exposition.
func scrapeSyncStats(ctx context.Context, url string) (syncStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return syncStats{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return syncStats{}, fmt.Errorf("bookie metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return syncStats{}, fmt.Errorf("bookie metrics %s: %s", url, resp.Status)
	}
	return parseSyncStats(resp.Body, url)
}

func parseSyncStats(r io.Reader, src string) (syncStats, error) {
	var s syncStats
	var seen int
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		var dst *float64
		switch name {
		case syncBytesMetric + "_sum":
			dst = &s.bytes
		case syncBytesMetric + "_count":
			dst = &s.syncs
		case addRequestsMetric:
			dst = &s.requests
		case addsMetric:
			dst = &s.adds
		default:
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(val)[0], 64)
		if err != nil {
			return s, fmt.Errorf("bookie metrics %s: %s: %w", src, name, err)
		}
		*dst = v
		if dst == &s.bytes || dst == &s.syncs {
			seen++
		}
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	if seen != 2 {
		return s, fmt.Errorf("bookie metrics %s: no %s histogram (is it a bookie's /metrics?)", src, syncBytesMetric)
	}
	return s, nil
}
