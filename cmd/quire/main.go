// Command quire runs a Quire node.
//
//	quire start [--config FILE] [--data-dir DIR] [--node-id N] [--log-format text|json] [--log-level LEVEL]
//	quire bookie --data-dir DIR --addr HOST:PORT [--journal-dir DIR] [--metrics-addr HOST:PORT] [--cookie-store FILE] ...
//	quire version
//
// This package is wiring and flags only; the node is internal/node and the
// configuration internal/config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/quiremq/quire/internal/config"
	"github.com/quiremq/quire/internal/node"
	"github.com/quiremq/quire/internal/version"
)

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1 // the node failed to start, or failed while running or stopping
	exitUsage  = 2 // bad command line or configuration
)

// stopTimeout bounds a graceful stop.
const stopTimeout = 30 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const mainHelp = `quire runs a node of Quire, a storage-first message queue.

Usage:
  quire start [flags]     run a node in the foreground until SIGINT or SIGTERM
  quire bookie [flags]    run a standalone bookie (journal storage server)
  quire version           print the version and exit
  quire help [command]    show this help, or a command's

'quire start' with no flags runs a complete single-node cluster on the
embedded default configuration: data in ./data, the admin API and Prometheus
metrics on :58080, the inner gRPC server on :1228.

Manage a running node with quirectl (quirectl --help).
Run 'quire start --help' for what a node runs, its flags and examples.
`

const startHelp = `Usage: quire start [--config FILE] [--data-dir DIR] [--node-id N]
                   [--log-format text|json] [--log-level debug|info|warn|error]

Runs one Quire node in the foreground. On SIGINT (Ctrl-C) or SIGTERM it stops
its components in reverse start order, flushes and closes every storage engine
and exits 0 (a second signal kills it at once).

What the node runs, in start order:
  inner gRPC server   [grpc] addr, default 0.0.0.0:1228; the standard gRPC
                      health service answers SERVING once the node is ready
  admin HTTP server   [admin] addr, default :58080:
                        /healthz  /readyz  /metrics (Prometheus)
                        /api/v1/cluster  /api/v1/topics  (used by quirectl)
  meta                the Raft metadata service (role "meta"), riding the
                      inner gRPC server (meta.v1.Meta): node registrations,
                      topics, the bookie's cookie. One address in meta_addrs
                      (the default) is a one-node cluster; nodes given the
                      same three addresses form one. The node waits for a
                      meta leader ([meta] leader_wait_timeout) before it
                      goes on, then registers itself under a lease
  bookie              the journal's storage server ([bookie] enabled, default
                      true: the node's "bookie" role), serving the
                      journal.v1.Bookie gRPC service on the inner gRPC server
  broker storage      the memory and file engines and the topic registry
                      (in meta: every node lists every topic; a topic's
                      shards live on the node it was created through);
                      [storage] default_engine and [[storage.rules]] choose
                      each topic's engine
Not built yet; the node logs at start that these are not served:
  the journal's ledger client and the journal engine, and the protocol
  listeners MQTT :1883 (TLS :8883, WS :8083, WSS :8084, QUIC :14567),
  Kafka :9092, AMQP :5672.

Data goes under data_dir (default ./data, relative to the working directory):
  LOCK          held while the node runs; two nodes cannot share a data_dir
  meta/         the meta service's Raft log, stable store and snapshots
  file/         segments of topics on the file engine
  bookie/       the bookie's entry logs, index and journal
  topics.json.migrated   an older build's topics.json, copied into meta
Topics on the memory engine keep their name and partitions across a restart,
but not their records.

Without --config the embedded default configuration is used; the repository's
config/quire.example.toml lists every key with its default. A configuration
error prints the file, key and line of each mistake and exits 2.

Flags:
`

const startExamples = `
Exit status: 0 after a clean stop; 1 if the node fails to start (a port in
use, a locked data_dir) or to stop; 2 for a usage or configuration error.

Examples:
  quire start
  quire start --config /etc/quire/quire.toml --log-format json
  quire start --data-dir /var/lib/quire --node-id 1
  curl -s localhost:58080/readyz
  quirectl topic create orders --partitions 3
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, mainHelp)
		return exitUsage
	}
	switch cmd := args[0]; cmd {
	case "start":
		return runStart(args[1:], stdout, stderr)
	case "bookie":
		return runBookie(args[1:], stdout, stderr)
	case "version", "--version", "-version", "-v":
		fmt.Fprintf(stdout, "quire %s\n", version.Get())
		return exitOK
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && args[1] == "start" {
			return runStart([]string{"--help"}, stdout, stderr)
		}
		if len(args) > 1 && args[1] == "bookie" {
			return runBookie([]string{"--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, mainHelp)
		return exitOK
	default:
		fmt.Fprintf(stderr, "quire: unknown command %q\n\n%s", cmd, mainHelp)
		return exitUsage
	}
}

func runStart(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quire start", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var (
		configPath = fs.String("config", "", "read the configuration from `FILE` (TOML); default: the embedded default")
		dataDir    = fs.String("data-dir", "", "keep data in `DIR`, overriding data_dir (default ./data)")
		nodeID     = fs.Uint64("node-id", 0, "this node's id `N` (>= 1), overriding node_id (default 1)")
		logFormat  = fs.String("log-format", "", "log `FORMAT`: text or json, overriding [log] format (default text)")
		logLevel   = fs.String("log-level", "", "log `LEVEL`: debug, info, warn or error, overriding [log] level (default info)")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, startHelp)
			printFlags(stdout, fs)
			fmt.Fprint(stdout, startExamples)
			return exitOK
		}
		fmt.Fprintf(stderr, "quire start: %v\nRun 'quire start --help' for usage.\n", err)
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "quire start: unexpected argument %q\nRun 'quire start --help' for usage.\n", fs.Arg(0))
		return exitUsage
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["node-id"] && *nodeID == 0 {
		fmt.Fprintln(stderr, "quire start: --node-id must be >= 1")
		return exitUsage
	}
	for _, name := range []string{"config", "data-dir", "log-format", "log-level"} {
		if set[name] && fs.Lookup(name).Value.String() == "" {
			fmt.Fprintf(stderr, "quire start: --%s must not be empty\n", name)
			return exitUsage
		}
	}

	cfg, err := config.Load(*configPath, config.Overrides{DataDir: *dataDir, NodeID: *nodeID, LogFormat: *logFormat, LogLevel: *logLevel})
	if err != nil {
		src := "the default configuration"
		if *configPath != "" {
			src = *configPath
		}
		fmt.Fprintf(stderr, "quire: invalid configuration in %s:\n  %s\n", src, strings.ReplaceAll(err.Error(), "\n", "\n  "))
		return exitUsage
	}
	log, err := node.NewLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		fmt.Fprintf(stderr, "quire: %v\n", err)
		return exitUsage
	}
	if *configPath == "" {
		log.Info("no --config given: running on the embedded default configuration")
	} else {
		log.Info("configuration loaded", "file", *configPath)
	}
	n, err := node.New(node.Options{Config: cfg, Logger: log})
	if err != nil {
		fmt.Fprintf(stderr, "quire: invalid configuration: %v\n", err)
		return exitUsage
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal gets the default action: exit at once
	}()
	if err := n.Run(ctx, stopTimeout); err != nil {
		log.Error("node failed", "err", err)
		fmt.Fprintf(stderr, "quire: %v\n", err)
		if errors.Is(err, config.ErrInvalid) {
			return exitUsage
		}
		return exitFailed
	}
	return exitOK
}

// printFlags lists fs's flags GNU-style ("--name VALUE").
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(w, "  --%s %s\n        %s\n", f.Name, name, usage)
	})
}

const bookieHelp = `Usage: quire bookie --data-dir DIR --addr HOST:PORT [--journal-dir DIR]
                    [--metrics-addr HOST:PORT] [--bookie-id ID] [--cookie-store FILE]
                    [--max-group-wait D] [--max-group-bytes N] [--max-entry-size N]
                    [--log-format text|json] [--log-level debug|info|warn|error]

Runs a bookie — the journal's storage server — alone, in the foreground, for
tests and benchmarks (a node runs one itself with [bookie] enabled). It
serves the journal.v1.Bookie gRPC service and the standard gRPC health
service (SERVING once the journal has been replayed) on --addr, and
Prometheus /metrics on --metrics-addr if given. On SIGINT or SIGTERM it
syncs and answers what is in flight, checkpoints, and exits 0.

The cookie: on first start the bookie writes its identity into DIR and the
journal directory and registers it in the cookie store, a file OUTSIDE
them — by default .quire-cookies.json in DIR's parent directory. A later
start on a directory that lost its cookie (a wiped or replaced disk, which
has forgotten its fences) while the store has one refuses to start, naming
the mismatch, and exits 1. The default store does not survive the parent
directory being wiped as well: give --cookie-store a path on another disk
for that. To deliberately reformat a bookie, remove its entry from the store.

Flags:
`

const bookieExamples = `
Exit status: 0 after a clean stop; 1 if the bookie fails to start (a cookie
mismatch, a port in use, a locked directory) or to stop; 2 for a usage error.

Examples:
  quire bookie --data-dir /var/lib/bookie1 --addr 127.0.0.1:3181 --metrics-addr 127.0.0.1:8000
  quire bookie --data-dir /data/b1 --journal-dir /fast/b1-journal --addr :3181 --cookie-store /etc/quire/cookies.json
`

func runBookie(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("quire bookie", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var (
		dataDir     = fs.String("data-dir", "", "keep the cookie, entry logs and index in `DIR` (required)")
		addr        = fs.String("addr", "", "serve gRPC on `HOST:PORT` (required)")
		journalDir  = fs.String("journal-dir", "", "keep the journal in `DIR` (default DIR/journal of --data-dir)")
		metricsAddr = fs.String("metrics-addr", "", "serve Prometheus /metrics over HTTP on `HOST:PORT` (default: none)")
		bookieID    = fs.String("bookie-id", "", "the bookie's `ID` in its cookie (default the --addr value)")
		cookieStore = fs.String("cookie-store", "", "the cookie store `FILE`, outside the bookie's directories (default .quire-cookies.json beside --data-dir)")
		groupWait   = fs.Duration("max-group-wait", 2*time.Millisecond, "group commit: sync a group once its oldest add waited `D`")
		groupBytes  = fs.Int("max-group-bytes", 512<<10, "group commit: ... or once it holds `N` bytes")
		maxEntry    = fs.Int("max-entry-size", 8<<20, "the largest entry payload in bytes `N`")
		logFormat   = fs.String("log-format", "text", "log `FORMAT`: text or json")
		logLevel    = fs.String("log-level", "info", "log `LEVEL`: debug, info, warn or error")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, bookieHelp)
			printFlags(stdout, fs)
			fmt.Fprint(stdout, bookieExamples)
			return exitOK
		}
		fmt.Fprintf(stderr, "quire bookie: %v\nRun 'quire bookie --help' for usage.\n", err)
		return exitUsage
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "quire bookie: %s\nRun 'quire bookie --help' for usage.\n", msg)
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		return usage(fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	case *dataDir == "":
		return usage("--data-dir is required")
	case *addr == "":
		return usage("--addr is required")
	case *groupWait <= 0:
		return usage("--max-group-wait must be > 0")
	case *groupBytes < 4096:
		return usage("--max-group-bytes must be >= 4096")
	case *maxEntry <= 0 || *maxEntry > config.MaxBookieEntrySize:
		return usage(fmt.Sprintf("--max-entry-size must be from 1 to %d", config.MaxBookieEntrySize))
	}
	log, err := node.NewLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return usage(err.Error())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal gets the default action: exit at once
	}()
	err = node.RunBookie(ctx, node.BookieOptions{
		DataDir: *dataDir, JournalDir: *journalDir, Addr: *addr, MetricsAddr: *metricsAddr,
		BookieID: *bookieID, CookieStore: *cookieStore,
		MaxGroupWait: *groupWait, MaxGroupBytes: *groupBytes, MaxEntrySize: *maxEntry,
		Logger: log,
	}, stopTimeout)
	if err != nil {
		log.Error("bookie failed", "err", err)
		fmt.Fprintf(stderr, "quire bookie: %v\n", err)
		return exitFailed
	}
	return exitOK
}
