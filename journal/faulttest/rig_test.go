package faulttest

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/quiremq/quire/journal/bookie/bookierpc"
	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta"
	"github.com/quiremq/quire/meta/metatest"
)

var (
	seedFlag = flag.Uint64("seed", 0, "seed of the fault schedule (0: from the clock); a failing run prints its seed")
	soakFlag = flag.Bool("soak", false, "run long (also QUIRE_SOAK=1); QUIRE_SOAK_DURATION sets the length (default 5m)")
)

func TestMain(m *testing.M) {
	if cfg := os.Getenv(writerEnv); cfg != "" {
		os.Exit(writerMain(cfg))
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// soak reports whether to run long, and for how long.
func soak(t testing.TB) (bool, time.Duration) {
	if !*soakFlag && os.Getenv("QUIRE_SOAK") != "1" {
		return false, 0
	}
	d := 5 * time.Minute
	if s := os.Getenv("QUIRE_SOAK_DURATION"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			t.Fatalf("QUIRE_SOAK_DURATION: %v", err)
		}
	}
	return true, d
}

// seed returns the schedule's seed and logs how to replay it.
func seed(t testing.TB) uint64 {
	s := *seedFlag
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay the schedule: go test ./journal/faulttest -run '^%s$' -seed %d)", s, t.Name(), s)
	return s
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// rig is one fault-test cluster: an in-process meta served over gRPC on
// loopback, n `quire bookie` processes each behind a proxy, the writer
// processes (one generation at a time) and the history they report.
type rig struct {
	t        testing.TB
	kv       meta.KV
	metaAddr string
	bookies  []*bookieProc
	h        *history
	cfg      writerConfig
	writer   *writerProc
	cl       *client.Client // the checker's: reaches bookies directly
	direct   map[string]*bookierpc.Client
	start    time.Time
}

// phase logs a step with the time since the rig started.
func (r *rig) phase(format string, a ...any) {
	r.t.Helper()
	r.t.Logf("[%6.2fs] %s", time.Since(r.start).Seconds(), fmt.Sprintf(format, a...))
}

func newRig(t testing.TB, n int, cfg writerConfig) *rig {
	t.Helper()
	r := &rig{t: t, h: newHistory(), direct: map[string]*bookierpc.Client{}, start: time.Now()}
	quireBinary(t)
	r.phase("quire built")
	r.startMeta()
	r.bookies = startBookies(t, n)
	r.phase("meta and %d bookies serving", n)
	var viaProxy, direct []client.BookieInfo
	for _, b := range r.bookies {
		viaProxy = append(viaProxy, client.BookieInfo{ID: b.addr, Addr: b.proxy.addr(), Node: b.name})
		direct = append(direct, client.BookieInfo{ID: b.addr, Addr: b.addr, Node: b.name})
		bc, err := bookierpc.Dial(b.addr, backoffDial())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bc.Close() })
		r.direct[b.addr] = bc
	}
	cfg.Meta, cfg.Bookies = r.metaAddr, viaProxy
	r.cfg = cfg
	cl, err := client.New(client.Options{Meta: r.kv, Directory: client.NewStaticDirectory(direct...),
		RequestTimeout: 5 * time.Second, DialOptions: []grpc.DialOption{backoffDial()}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	r.cl = cl
	return r
}

func (r *rig) startMeta() {
	s := metatest.Start(r.t)
	r.kv, r.metaAddr = s, metatest.Serve(r.t, s)
}

// startWriter starts the next writer generation (the previous one must
// be dead or finished).
func (r *rig) startWriter() {
	r.cfg.Gen++
	r.writer = startWriter(r.t, r.cfg, r.h)
}

// finish lets the writer close its ledger, then checks the history.
func (r *rig) finish() int64 {
	r.t.Helper()
	if err := r.writer.finish(r.t, 60*time.Second); err != nil {
		r.t.Error(err)
	}
	r.phase("writer %d closed the log", r.writer.gen)
	for _, b := range r.bookies {
		b.checkAlive()
		b.mu.Lock()
		killed := b.killed
		b.mu.Unlock()
		if killed { // the check reads every copy
			if err := b.restart(); err != nil {
				r.t.Fatal(err)
			}
			r.phase("restarted %s", b.name)
		}
	}
	c := &checker{t: r.t, cl: r.cl, kv: r.kv, shard: r.cfg.Shard, bookies: r.direct}
	end := c.check(r.h)
	r.phase("history checked")
	inv, acked, failed := r.h.counts()
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	r.t.Logf("log of %d records; %d appends invoked by %d writer processes, %d acknowledged, %d failed (ambiguous), %d unknown; %d takeovers",
		end, inv, r.cfg.Gen, acked, failed, inv-acked-failed, len(r.h.opened))
	return end
}

// waitAcks waits until n more appends are acknowledged. After d it fails
// with the bookies' output and the writer's, with its goroutines (it is
// sent SIGQUIT).
func (r *rig) waitAcks(n int, d time.Duration) {
	r.t.Helper()
	if got, ok := r.h.waitAcks(n, d); !ok {
		for _, b := range r.bookies {
			b.mu.Lock()
			r.t.Logf("bookie %s (up %v, stopped %v, proxy %v):\n%s", b.name, !b.p.exited(), b.stopped, b.proxy.getMode(), b.p.output)
			b.mu.Unlock()
		}
		w := r.writer
		if !w.p.exited() {
			w.p.signal(syscall.SIGQUIT)
			select {
			case <-w.p.done:
			case <-time.After(10 * time.Second):
			}
		}
		r.t.Fatalf("only %d of %d acknowledgements within %v; writer %d:\n%s", got, n, d, w.gen, w.p.output)
	}
}
