package faulttest

// The writer: a re-exec of this test binary (TestMain runs writerMain
// when writerEnv is set) that takes the shard's log over and appends to
// it until its stdin closes, so that the test can kill -9 it. It reports
// on stdout, one line per event, each only after the event:
//
//	O gen ledger                      took the log over, writing ledger
//	I gen seq                         about to call AppendAsync for seq
//	A gen seq offset ledger entry     seq acknowledged at offset
//	F gen seq error                   seq failed (ambiguous: may survive)
//	C gen                             closed the log's ledger after stdin EOF
//
// When an append fails the writer abandons its LogWriter (as a crashed
// leader would) and takes the log over again, as a new leader would.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/quiremq/quire/journal/client"
	"github.com/quiremq/quire/meta"
)

// writerEnv holds the writer's JSON config; its presence makes the test
// binary a writer.
const writerEnv = "QUIRE_FAULTTEST_WRITER"

type writerConfig struct {
	Meta        string              `json:"meta"`
	Bookies     []client.BookieInfo `json:"bookies"`
	Shard       string              `json:"shard"`
	Gen         int64               `json:"gen"`
	E, Qw, Qa   int
	RollEntries int64         `json:"roll_entries"`
	Rate        int           `json:"rate"` // appends per second
	Inflight    int           `json:"inflight"`
	AddTimeout  time.Duration `json:"add_timeout"`
	ReqTimeout  time.Duration `json:"request_timeout"`
}

// payload is the deterministic record of (gen, seq): a header the checker
// parses and filler it compares byte for byte.
func payload(gen, seq int64) []byte {
	head := fmt.Sprintf("g%d s%d|", gen, seq)
	n := len(head) + 16 + int(uint64(gen*7919+seq*104729)%480)
	p := make([]byte, n)
	x := uint64(gen)*0x9E3779B97F4A7C15 ^ uint64(seq)*0xBF58476D1CE4E5B9 | 1
	for i := range p {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p[i] = byte(x)
	}
	copy(p, head)
	return p
}

// parsePayload returns the (gen, seq) a payload names.
func parsePayload(p []byte) (key, bool) {
	s, _, ok := strings.Cut(string(p[:min(len(p), 48)]), "|")
	if !ok {
		return key{}, false
	}
	var k key
	if _, err := fmt.Sscanf(s, "g%d s%d", &k.gen, &k.seq); err != nil {
		return key{}, false
	}
	return k, true
}

func backoffDial() grpc.DialOption {
	return grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.6, MaxDelay: 100 * time.Millisecond},
		MinConnectTimeout: time.Second})
}

// writerMain is the writer process's main.
func writerMain(cfgJSON string) int {
	var cfg writerConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "writer: bad config: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	mc, err := meta.NewClient(meta.ClientOptions{Addrs: []string{cfg.Meta}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "writer: %v\n", err)
		return 2
	}
	cl, err := client.New(client.Options{Meta: mc, Directory: client.NewStaticDirectory(cfg.Bookies...),
		AddTimeout: cfg.AddTimeout, RequestTimeout: cfg.ReqTimeout, MaxInflight: cfg.Inflight,
		DialOptions: []grpc.DialOption{backoffDial()}, Logger: log})
	if err != nil {
		fmt.Fprintf(os.Stderr, "writer: %v\n", err)
		return 2
	}
	var outMu sync.Mutex
	say := func(format string, a ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(os.Stdout, format+"\n", a...) // unbuffered: written before we go on
	}
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	ctx := context.Background()
	opts := client.LogOptions{Ensemble: cfg.E, WriteQuorum: cfg.Qw, AckQuorum: cfg.Qa, RollEntries: cfg.RollEntries}
	interval := 2 * time.Millisecond
	perTick := max(1, cfg.Rate*int(interval)/int(time.Second))
	var seq int64
	for {
		lw := takeOver(ctx, cl, cfg.Shard, opts, log, stop)
		if lw == nil {
			return 1 // stopped before it could take over
		}
		say("O %d %d", cfg.Gen, lw.Ledger())
		type pending struct {
			seq int64
			f   client.LogFuture
		}
		futs := make(chan pending, 1<<16)
		broken := make(chan struct{})
		var once sync.Once
		acksDone := make(chan struct{})
		go func() {
			defer close(acksDone)
			for p := range futs {
				off, err := p.f.Result()
				if err != nil {
					say("F %d %d %s", cfg.Gen, p.seq, oneLine(err))
					once.Do(func() { close(broken) })
					continue
				}
				e, _ := p.f.Entry()
				say("A %d %d %d %d %d", cfg.Gen, p.seq, off, p.f.Ledger(), e)
			}
		}()
		tick := time.NewTicker(interval)
		stopping := false
	issue:
		for {
			select {
			case <-stop:
				stopping = true
				break issue
			case <-broken:
				break issue
			case <-tick.C:
			}
			for range perTick {
				seq++
				say("I %d %d", cfg.Gen, seq)
				f, err := lw.AppendAsync(ctx, payload(cfg.Gen, seq))
				if err != nil {
					say("F %d %d %s", cfg.Gen, seq, oneLine(err))
					break issue
				}
				futs <- pending{seq, f}
			}
		}
		tick.Stop()
		if stopping {
			close(futs)
			<-acksDone
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := lw.Close(cctx)
			cancel()
			if err != nil {
				fmt.Fprintf(os.Stderr, "writer: close: %v\n", err)
				return 3
			}
			say("C %d", cfg.Gen)
			return 0
		}
		lw.Abandon()
		close(futs)
		<-acksDone
		log.Warn("writer: an append failed; taking the log over again")
	}
}

// takeOver opens the log for writing, retrying (recovery aborts while too
// many bookies are unreachable) until it succeeds or stop closes.
func takeOver(ctx context.Context, cl *client.Client, shard string, o client.LogOptions, log *slog.Logger, stop <-chan struct{}) *client.LogWriter {
	for {
		lw, err := cl.OpenLogWriter(ctx, shard, o)
		if err == nil {
			return lw
		}
		log.Warn("writer: taking the log over", "err", err)
		select {
		case <-stop:
			return nil
		case <-time.After(time.Duration(50+rand.IntN(100)) * time.Millisecond):
		}
	}
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// writerProc is a running writer process as the test sees it.
type writerProc struct {
	gen   int64
	p     *proc
	stdin *os.File
	eof   chan struct{} // its stdout is drained
}

// startWriter starts writer generation cfg.Gen, feeding its events to h.
func startWriter(t testing.TB, cfg writerConfig, h *history) *writerProc {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = childEnv(writerEnv + "=" + string(js))
	cmd.Stdin, cmd.Stdout = inR, outW
	w := &writerProc{gen: cfg.Gen, stdin: inW, eof: make(chan struct{})}
	if w.p, err = startProc(t, cmd); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	go func() {
		defer close(w.eof)
		defer outR.Close()
		h.read(outR)
	}()
	t.Cleanup(func() { inW.Close() })
	return w
}

// kill9 kills the writer; whatever it invoked and did not report is
// unknown.
func (w *writerProc) kill9() {
	w.p.kill()
	<-w.eof
}

// finish closes its stdin and waits for a clean close (exit status 0).
func (w *writerProc) finish(t testing.TB, d time.Duration) error {
	w.stdin.Close()
	select {
	case <-w.p.done:
	case <-time.After(d):
		w.kill9()
		return fmt.Errorf("writer %d did not finish within %v:\n%s", w.gen, d, w.p.output)
	}
	<-w.eof
	if w.p.err != nil {
		var ee *exec.ExitError
		if errors.As(w.p.err, &ee) {
			return fmt.Errorf("writer %d exited with %d:\n%s", w.gen, ee.ExitCode(), w.p.output)
		}
		return w.p.err
	}
	return nil
}

// parseLine splits an event line into its kind and integer fields.
func parseLine(line string) (kind string, nums []int64, rest string, err error) {
	f := strings.SplitN(line, " ", 7)
	if len(f) < 2 {
		return "", nil, "", fmt.Errorf("short line %q", line)
	}
	kind = f[0]
	want := map[string]int{"O": 2, "I": 2, "A": 5, "F": 2, "C": 1}[kind]
	if want == 0 || len(f) < want+1 {
		return "", nil, "", fmt.Errorf("bad line %q", line)
	}
	for _, s := range f[1 : want+1] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return "", nil, "", fmt.Errorf("bad line %q: %v", line, err)
		}
		nums = append(nums, n)
	}
	if len(f) > want+1 {
		rest = strings.Join(f[want+1:], " ")
	}
	return kind, nums, rest, nil
}
