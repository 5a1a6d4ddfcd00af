// Command journal-bench measures Quire's journal: it starts bookies (or
// uses running ones) and drives them with writers through the ledger
// client, printing a progress line every second and a summary; with --json
// the last line is one JSON object (see result) for scripts.
//
//	journal-bench --bookies 3 --ensemble 3 --write-quorum 2 --ack-quorum 2 --entry-size 1024 --raw-disk --json
//	journal-bench --mode catchup --duration 5s
//	journal-bench --bookie-addrs 10.0.0.1:3181,10.0.0.2:3181,10.0.0.3:3181 --bookie-metrics http://10.0.0.1:8000/metrics,...
//
// Modes: write (appends only), catchup (appends, then the closed ledgers
// are read back from their first entry: catch-up reads) and tail (readers
// follow the ledgers while they are written: tailing reads). Every read
// mode checks that it reads back exactly what was acknowledged, in order.
//
// This package is flags, load generation and reporting; the cluster it
// runs on is cluster.go, the disk ceiling rawdisk.go, the stages of the
// add latency stages.go; the latency histogram is internal/hist.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"time"
)

const (
	exitOK     = 0
	exitFailed = 1 // the run failed (an error, or data read back wrong)
	exitUsage  = 2
)

const help = `journal-bench measures the journal: bookies, the ledger client and the disk.

Usage:
  journal-bench [flags]

It starts --bookies bookies in this process (each a real gRPC server on
loopback with its own directory under --data-dir) and a one-voter meta on
disk for ledger metadata, or, with --bookie-addrs, uses running bookies (for
example 'quire bookie' processes). In both cases ledger metadata lives in
the in-process meta: the bookies need no meta of their own, so no
--meta-addrs is needed. With --bookie-addrs the ledger ids start at 2^62,
so a cluster's bookies ('quire start' nodes) can be measured without
touching the cluster's ledgers; but their garbage collection ([bookie]
gc_interval, 10m) deletes the bench's ledgers, unknown to the cluster's
meta, two passes after they appear: keep such runs shorter than that. W writers (--writers) append --entry-size entries to
--ledgers ledgers (writer w appends to ledger w mod L) with up to --inflight
appends each in flight, for --warmup (1s; left out of every figure) and
then the measured --duration. Before the writers start, and before the
--raw-disk measurement, it syncs the file systems (sync(2)), so that data
left dirty by earlier runs is not written back under this one.

Flags:
`

const examples = `
Modes (--mode):
  write    appends only; reports entries/s, MB/s and the add latency
           (AppendAsync to acknowledgement) p50/p99/p999
  catchup  appends for --duration, closes the ledgers, then reads them back
           from entry 0 (catch-up reads of closed ledgers): read_* fields
  tail     readers follow every ledger from entry 0 while it is written
           (tailing reads) until its close: read_* fields, and tail_p50_ms
           / tail_p99_ms from append to read
Read modes check every entry: what is read back is exactly what was
acknowledged, each writer's entries in the order it appended them.

Output: a progress line every second, then a summary. With --json the last
line is one JSON object: entries_per_sec, mb_per_sec, p50_ms, p99_ms,
p999_ms, ensemble, write_quorum, ack_quorum, entry_size, duration_s,
warmup_s,
bytes_per_sync, disk_ceiling_mb_per_sec and disk_efficiency (null without
--raw-disk), cpu_us_per_entry (this process's CPU, in-process bookies
included, per append: steadier than rates on a shared machine),
adds_per_request (adds per AddEntries message the bookies received: the
client's batching; null when no bookie reported it), stages (the add
latency stage by stage, adding up to it: pacer, admit, mailbox, send,
stream, answer, order, caller, each with p50_ms, p99_ms and tail_mean_ms, its mean
over the slowest 1% of one append in 8: the largest tail mean is where the
p99 goes; see stages.go), the other settings, and read_* fields in read
modes.

--raw-disk: after the run, the raw write+fdatasync ceiling of the data
directory (one writer, sequential, on a pre-zeroed file) at the journal
bytes per fdatasync the bookies achieved, read from their metrics
(quire_bookie_journal_sync_bytes); disk_efficiency = acknowledged bytes/s x
write quorum / ceiling (1.0: the bookies wrote as fast as the disk allows).
With --bookie-addrs the metrics come from --bookie-metrics, and --data-dir
should be on the bookies' disk.

Exit status: 0 after a clean run; 1 if the run failed (an append or read
failed, or data read back differs); 2 for a usage error.

Examples:
  journal-bench --rate 20000 --json    # the add latency at a given load (e.g. half the maximum)
  journal-bench --bookies 3 --ensemble 3 --write-quorum 2 --ack-quorum 2 --entry-size 1024 --raw-disk --json
  journal-bench --mode catchup --writers 4 --ledgers 4 --duration 5s --json
  journal-bench --bookie-addrs 127.0.0.1:3181,127.0.0.1:3182,127.0.0.1:3183 \
      --bookie-metrics http://127.0.0.1:8001/metrics,http://127.0.0.1:8002/metrics,http://127.0.0.1:8003/metrics
`

// config is the parsed command line.
type config struct {
	bookies       int
	bookieAddrs   []string
	bookieMetrics []string
	ensemble      int
	writeQuorum   int
	ackQuorum     int
	entrySize     int
	writers       int
	inflight      int
	ledgers       int
	duration      time.Duration
	warmup        time.Duration
	dataDir       string
	json          bool
	rawDisk       bool
	mode          string
	rate          float64       // entries/s over all writers; 0: as fast as they can
	quiet         bool          // no progress lines (tests)
	cpuProfile    string        // write a CPU profile of the run here
	readProfile   string        // catchup: a CPU profile of the read phase only
	memProfile    string        // write an allocation profile of the run here
	tracePath     string        // write an execution trace of the run here
	idleGroupWait time.Duration // in-process bookies' Options.IdleGroupWait
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func parseFlags(args []string, stdout, stderr io.Writer) (*config, int) {
	fs := flag.NewFlagSet("journal-bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c := &config{}
	var addrs, metricsURLs string
	fs.IntVar(&c.bookies, "bookies", 3, "start `N` bookies in this process (ignored with --bookie-addrs)")
	fs.StringVar(&addrs, "bookie-addrs", "", "use the running bookies at these comma-separated `HOST:PORT`s instead of starting any")
	fs.StringVar(&metricsURLs, "bookie-metrics", "", "comma-separated `URL`s of the --bookie-addrs bookies' Prometheus metrics (needed by --raw-disk with --bookie-addrs)")
	fs.IntVar(&c.ensemble, "ensemble", 3, "ensemble size `E`: bookies per ledger")
	fs.IntVar(&c.writeQuorum, "write-quorum", 2, "write quorum `Qw`: bookies each entry is written to")
	fs.IntVar(&c.ackQuorum, "ack-quorum", 2, "ack quorum `Qa`: bookie acknowledgements an append waits for")
	fs.IntVar(&c.entrySize, "entry-size", 1024, "entry payload size in `BYTES` (at least 24)")
	fs.IntVar(&c.writers, "writers", 4, "`W` concurrent writers")
	fs.IntVar(&c.inflight, "inflight", 256, "appends `N` each writer keeps in flight")
	fs.IntVar(&c.ledgers, "ledgers", 4, "`L` ledgers written at once (writer w appends to ledger w mod L; at most --writers)")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long the writers append (`DURATION`, e.g. 10s), after --warmup")
	fs.DurationVar(&c.warmup, "warmup", time.Second, "how long the writers append before the measured --duration (`DURATION`; 0: none); the warm-up's appends are read back in catchup mode but left out of every figure (connections, first journal syncs and rolls, the Go heap growing)")
	fs.StringVar(&c.dataDir, "data-dir", "", "`DIR` under which the run's directory is made (bookies, meta, the raw-disk file) and removed after; default the system temp dir")
	fs.BoolVar(&c.json, "json", false, "print the summary as one JSON object on the last line")
	fs.BoolVar(&c.rawDisk, "raw-disk", false, "measure the data directory's write+fdatasync ceiling at the bookies' bytes per sync; report disk_efficiency")
	fs.StringVar(&c.mode, "mode", "write", "`MODE`: write, catchup (read closed ledgers back) or tail (read while writing)")
	fs.Float64Var(&c.rate, "rate", 0, "pace the writers to `N` appends/s in all (0: as fast as they can); latency is then measured from each append's scheduled time, so falling behind shows")
	fs.DurationVar(&c.idleGroupWait, "idle-group-wait", 0, "in-process bookies: how long a journal group waits with the syncer idle before it goes (bookie Options.IdleGroupWait; `DURATION`, 0: at once)")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress lines")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the run (in-process bookies included) to `FILE`, for go tool pprof")
	fs.StringVar(&c.readProfile, "read-cpuprofile", "", "catchup mode: write a CPU profile of the read phase only (the read back of the closed ledgers, bookies included) to `FILE`")
	fs.StringVar(&c.memProfile, "memprofile", "", "write an allocation profile (allocs) taken at the end of the run to `FILE`, for go tool pprof")
	fs.StringVar(&c.tracePath, "trace", "", "write an execution trace of the run to `FILE`, for go tool trace (keep the run short: tens of MB per second)")
	usage := func(w io.Writer) {
		fmt.Fprint(w, help)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		fmt.Fprint(w, examples)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return nil, exitOK
		}
		fmt.Fprintf(stderr, "journal-bench: %v\nRun 'journal-bench --help' for usage.\n", err)
		return nil, exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "journal-bench: unexpected argument %q\nRun 'journal-bench --help' for usage.\n", fs.Arg(0))
		return nil, exitUsage
	}
	c.bookieAddrs = splitList(addrs)
	c.bookieMetrics = splitList(metricsURLs)
	if err := c.validate(); err != nil {
		fmt.Fprintf(stderr, "journal-bench: %v\nRun 'journal-bench --help' for usage.\n", err)
		return nil, exitUsage
	}
	return c, exitOK
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// minEntrySize is the payload header every entry carries (see payload.go).
const minEntrySize = headerSize

func (c *config) validate() error {
	n := c.bookies
	if len(c.bookieAddrs) > 0 {
		n = len(c.bookieAddrs)
	}
	switch {
	case c.mode != "write" && c.mode != "catchup" && c.mode != "tail":
		return fmt.Errorf("--mode %q: want write, catchup or tail", c.mode)
	case n < 1:
		return fmt.Errorf("--bookies %d: need at least 1", c.bookies)
	case !(c.ensemble >= c.writeQuorum && c.writeQuorum >= c.ackQuorum && c.ackQuorum >= 1):
		return fmt.Errorf("need --ensemble >= --write-quorum >= --ack-quorum >= 1, have %d/%d/%d", c.ensemble, c.writeQuorum, c.ackQuorum)
	case c.ensemble > n:
		return fmt.Errorf("--ensemble %d is more than the %d bookies", c.ensemble, n)
	case c.entrySize < minEntrySize:
		return fmt.Errorf("--entry-size %d: need at least %d (the entry header)", c.entrySize, minEntrySize)
	case c.entrySize > 8<<20:
		return fmt.Errorf("--entry-size %d: at most %d (the bookie's default maximum entry size)", c.entrySize, 8<<20)
	case c.writers < 1 || c.inflight < 1 || c.ledgers < 1:
		return fmt.Errorf("--writers, --inflight and --ledgers must be at least 1")
	case c.ledgers > c.writers:
		return fmt.Errorf("--ledgers %d is more than --writers %d (a ledger without a writer)", c.ledgers, c.writers)
	case c.duration <= 0:
		return fmt.Errorf("--duration %v: must be positive", c.duration)
	case c.warmup < 0:
		return fmt.Errorf("--warmup %v: must not be negative", c.warmup)
	case c.rate < 0:
		return fmt.Errorf("--rate %v: must not be negative", c.rate)
	case c.readProfile != "" && (c.mode != "catchup" || c.cpuProfile != ""):
		return errors.New("--read-cpuprofile needs --mode catchup and no --cpuprofile (one profile at a time)")
	case c.rawDisk && len(c.bookieAddrs) > 0 && len(c.bookieMetrics) == 0:
		return errors.New("--raw-disk with --bookie-addrs needs --bookie-metrics (the bookies' bytes per sync)")
	}
	return nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, code := parseFlags(args, stdout, stderr)
	if c == nil {
		return code
	}
	stopProfile, err := startCPUProfile(c.cpuProfile)
	if err != nil {
		fmt.Fprintf(stderr, "journal-bench: %v\n", err)
		return exitFailed
	}
	stopTrace, err := startTrace(c.tracePath)
	if err != nil {
		stopProfile()
		fmt.Fprintf(stderr, "journal-bench: %v\n", err)
		return exitFailed
	}
	res, err := bench(ctx, c, stdout)
	if perr := stopTrace(); perr != nil && err == nil {
		err = perr
	}
	if perr := stopProfile(); perr != nil && err == nil {
		err = perr
	}
	if perr := writeProfile("allocs", "--memprofile", c.memProfile); perr != nil && err == nil {
		err = perr
	}
	if err != nil {
		fmt.Fprintf(stderr, "journal-bench: %v\n", err)
		return exitFailed
	}
	if err := res.print(stdout, c.json); err != nil {
		fmt.Fprintf(stderr, "journal-bench: %v\n", err)
		return exitFailed
	}
	return exitOK
}

// startCPUProfile starts a CPU profile into path (nothing when path is
// empty) and returns the function that stops it and closes the file.
func startCPUProfile(path string) (stop func() error, err error) {
	return startRecording(path, "--cpuprofile", pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// startTrace starts an execution trace into path (nothing when path is
// empty) and returns the function that stops it and closes the file.
func startTrace(path string) (stop func() error, err error) {
	return startRecording(path, "--trace", trace.Start, trace.Stop)
}

// startRecording creates path and starts a recording into it with start
// (nothing when path is empty); the returned function ends it with end and
// closes the file. flag names the option in errors.
func startRecording(path, flag string, start func(io.Writer) error, end func()) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return func() error {
		end()
		if err := f.Close(); err != nil {
			return fmt.Errorf("%s: %w", flag, err)
		}
		return nil
	}, nil
}

// writeProfile writes the named pprof profile to path (nothing when path
// is empty); flag names the option in errors.
func writeProfile(name, flag, path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	err = pprof.Lookup(name).WriteTo(f, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	return nil
}
