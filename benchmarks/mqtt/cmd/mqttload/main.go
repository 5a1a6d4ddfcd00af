// Command mqttload is the MQTT load generator of benchmarks/mqtt: it runs
// one scenario against one broker and prints what was delivered, how fast
// and with what latency, or tabulates the results of many runs.
//
//	mqttload -addr 127.0.0.1:1883 -scenario p2p -qos 1 -size 64 -clients 4 -duration 5s
//	mqttload -addr 127.0.0.1:1883 -scenario fanout -clients 16 -json >> results.jsonl
//	mqttload -addr 127.0.0.1:1883 -scenario p2p -qos 1 -size 1024 -rate 10000
//	mqttload -addr 127.0.0.1:1883 -scenario idle -clients 5000 -duration 10m -ready-file /tmp/r1
//	mqttload table results.jsonl
//
// Exit status: 0 when every message was delivered exactly once, 3 when the
// run completed but lost, duplicated or left unacknowledged messages (the
// result is printed, marked ok=false), 2 for bad flags, 1 when the run could
// not be carried out.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/quiremq/quire/benchmarks/mqtt/load"
	"github.com/quiremq/quire/frontends/mqtt/packet"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "table" {
		return table(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("mqttload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg load.Config
	var qos, version int
	var scenario, readyFile string
	var asJSON bool
	var res load.Result
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:1883", "broker address HOST:PORT")
	fs.StringVar(&scenario, "scenario", string(load.PointToPoint), fmt.Sprintf("one of %v", load.Scenarios))
	fs.IntVar(&qos, "qos", 0, "QoS of publications and subscriptions: 0 or 1")
	fs.IntVar(&cfg.Size, "size", load.DefaultSize, fmt.Sprintf("payload bytes (at least %d)", load.HeaderSize))
	fs.IntVar(&cfg.Clients, "clients", load.DefaultClients, "pairs (p2p), publishers (fanin), subscribers (fanout) or connections (idle)")
	fs.DurationVar(&cfg.Duration, "duration", load.DefaultDuration, "measured time after the warm-up (idle: how long connections are held)")
	fs.DurationVar(&cfg.Warmup, "warmup", load.DefaultWarmup, "unmeasured traffic before the measured window")
	fs.DurationVar(&cfg.Drain, "drain", load.DefaultDrain, "longest wait for the last deliveries after publishing stops")
	fs.IntVar(&cfg.Window, "window", load.DefaultWindow, "messages in flight end to end per subscriber")
	fs.Float64Var(&cfg.Rate, "rate", 0, "offered load in msgs/s over all publishers, latency charged from each message's due time (0: as fast as -window allows)")
	fs.IntVar(&version, "mqtt", 4, "MQTT protocol level: 4 (3.1.1) or 5")
	fs.StringVar(&cfg.Prefix, "prefix", "", "topic and client-id prefix (default: unique per run)")
	fs.BoolVar(&asJSON, "json", false, "print the result as one JSON line")
	fs.StringVar(&res.Broker, "broker", "", "broker label for the JSON result (quire, mosquitto, mochi)")
	fs.StringVar(&res.Setup, "setup", "", "setup label for the JSON result (memory, durable)")
	fs.StringVar(&readyFile, "ready-file", "", "create this file once every connection is up")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mqttload: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if qos < 0 || qos > 1 {
		fmt.Fprintf(stderr, "mqttload: -qos %d: want 0 or 1\n", qos)
		return 2
	}
	cfg.Scenario, cfg.QoS, cfg.Version = load.Scenario(scenario), packet.QoS(qos), packet.Version(version)
	if readyFile != "" {
		cfg.OnReady = func() {
			if err := os.WriteFile(readyFile, nil, 0o644); err != nil {
				fmt.Fprintf(stderr, "mqttload: %v\n", err)
			}
		}
	}
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "mqttload: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := load.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "mqttload: %s against %s: %v\n", cfg.Scenario, cfg.Addr, err)
		return 1
	}
	r.Broker, r.Setup = res.Broker, res.Setup
	if asJSON {
		b, _ := json.Marshal(r)
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		fmt.Fprintln(stdout, r.Summary())
	}
	if !r.OK {
		fmt.Fprintf(stderr, "mqttload: delivery check failed: lost=%d duplicates=%d foreign=%d unacked=%d\n",
			r.Lost, r.Duplicates, r.Foreign, r.Unacked)
		return 3
	}
	return 0
}

// table prints the Markdown table of the JSON-line results in the files.
func table(files []string, stdout, stderr io.Writer) int {
	if len(files) == 0 {
		fmt.Fprintln(stderr, "usage: mqttload table RESULTS.jsonl...")
		return 2
	}
	var all []load.Result
	for _, f := range files {
		in, err := os.Open(f)
		if err != nil {
			fmt.Fprintf(stderr, "mqttload: %v\n", err)
			return 1
		}
		rs, err := load.ReadResults(in)
		in.Close()
		if err != nil {
			fmt.Fprintf(stderr, "mqttload: %s: %v\n", f, err)
			return 1
		}
		all = append(all, rs...)
	}
	if err := load.WriteTable(stdout, all); err != nil {
		fmt.Fprintf(stderr, "mqttload: %v\n", err)
		return 1
	}
	return 0
}
