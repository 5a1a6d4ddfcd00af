// Command quire runs a Quire node.
//
//	quire start [--config FILE] [--data-dir DIR] [--node-id N] [--log-format text|json] [--log-level LEVEL]
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
  broker storage      the memory and file engines and the topic registry;
                      [storage] default_engine and [[storage.rules]] choose
                      each topic's engine
Not built yet; the node logs at start that these are not served:
  meta (Raft; topics are kept locally), journal, and the protocol listeners
  MQTT :1883 (TLS :8883, WS :8083, WSS :8084, QUIC :14567), Kafka :9092,
  AMQP :5672.

Data goes under data_dir (default ./data, relative to the working directory):
  LOCK          held while the node runs; two nodes cannot share a data_dir
  topics.json   the topic registry
  file/         segments of topics on the file engine
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
	case "version", "--version", "-version", "-v":
		fmt.Fprintf(stdout, "quire %s\n", version.Get())
		return exitOK
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && args[1] == "start" {
			return runStart([]string{"--help"}, stdout, stderr)
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
