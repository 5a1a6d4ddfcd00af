// Command quirectl manages a Quire node through its admin HTTP API.
//
//	quirectl [--server HOST:PORT] [--json] cluster status
//	quirectl topic list | describe NAME | create NAME [--engine E] [--partitions N] | delete NAME
//	quirectl passwd NAME < password
//
// This package is flags and output formatting only; the API client is
// internal/node/adminapi.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/quiremq/quire/frontends/auth"
	"github.com/quiremq/quire/internal/node/adminapi"
	"github.com/quiremq/quire/internal/version"
)

const (
	exitOK     = 0
	exitFailed = 1 // the server refused, or could not be reached
	exitUsage  = 2
)

// defaultServer is the admin address of `quire start` with the default
// configuration.
const defaultServer = "127.0.0.1:58080"

const mainHelp = `quirectl manages a running Quire node through its admin HTTP API.

Usage:
  quirectl [global flags] COMMAND [flags] [args]

Commands:
  cluster status                  the cluster's nodes, their roles and state, the meta leader
  topic list                      every topic: engine, partitions, records held
  topic describe NAME             one topic, with each partition's low/high watermarks
  topic create NAME [--engine E] [--partitions N]
                                  create a topic; without --engine the node's storage
                                  rules pick it (default_engine, [[storage.rules]])
  topic delete NAME               delete a topic and all of its data
  ledger list [--under-replicated]
                                  the journal's ledgers: state, E/Qw/Qa, ensembles, and
                                  the bookies they name that are not live (MISSING);
                                  the live bookies and the node running re-replication
  passwd NAME                     read a password from stdin and print the [[mqtt.users]]
                                  entry (bcrypt hash, SCRAM-SHA-256 credentials) for NAME
                                  to paste into the config;
                                  works offline, no server needed
  version                         print quirectl's version

Global flags (accepted before or after the command):
`

const mainExamples = `
The server is --server, else $QUIRE_SERVER, else ` + defaultServer + ` (the admin address of
'quire start' with the default configuration). Output is a table; --json prints
the server's JSON answer unchanged, for scripts.

Exit status: 0 on success; 1 when the node refuses (its message is printed) or
cannot be reached; 2 for a usage error.

Examples:
  quirectl cluster status
  quirectl topic create orders --partitions 3
  quirectl topic create sensors/temp --engine memory
  quirectl topic list --json
  quirectl ledger list --under-replicated
  quirectl --server 10.0.0.5:58080 topic delete orders
  echo 'wonderland' | quirectl passwd alice >> quire.toml
`

// globals are accepted by every command.
type globals struct {
	server  string
	json    bool
	timeout time.Duration
}

func defaultGlobals() globals {
	g := globals{server: defaultServer, timeout: 10 * time.Second}
	if s := os.Getenv("QUIRE_SERVER"); s != "" {
		g.server = s
	}
	return g
}

// register defines the global flags on fs, with their current values as
// defaults, so that a command's flag set keeps what the top level parsed.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.server, "server", g.server, "the node's admin API as `HOST:PORT` or URL")
	fs.BoolVar(&g.json, "json", g.json, "print the server's JSON answer instead of a table")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "give up on the server after `DURATION`")
}

// stdin is where passwd reads the password (a variable for tests).
var stdin io.Reader = os.Stdin

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type cli struct {
	g              globals
	stdout, stderr io.Writer
}

// usageError is a bad command line; it exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func run(args []string, stdout, stderr io.Writer) int {
	c := &cli{g: defaultGlobals(), stdout: stdout, stderr: stderr}
	fs := c.flagSet("quirectl")
	rest, err := parse(fs, args, 0)
	if err != nil {
		return c.fail(err, func(w io.Writer) { fmt.Fprint(w, mainHelp); printFlags(w, fs); fmt.Fprint(w, mainExamples) })
	}
	if len(rest) == 0 {
		fmt.Fprint(stderr, mainHelp)
		printFlags(stderr, fs)
		fmt.Fprint(stderr, mainExamples)
		return exitUsage
	}
	help := func(w io.Writer) { fmt.Fprint(w, mainHelp); printFlags(w, fs); fmt.Fprint(w, mainExamples) }
	switch strings.Join(firstN(rest, 2), " ") {
	case "cluster status":
		return c.clusterStatus(rest[2:])
	case "topic list":
		return c.topicList(rest[2:])
	case "topic describe":
		return c.topicDescribe(rest[2:])
	case "topic create":
		return c.topicCreate(rest[2:])
	case "topic delete":
		return c.topicDelete(rest[2:])
	case "ledger list":
		return c.ledgerList(rest[2:])
	}
	switch rest[0] {
	case "passwd":
		return c.passwd(rest[1:], stdin)
	case "version":
		fmt.Fprintf(stdout, "quirectl %s\n", version.Get())
		return exitOK
	case "help":
		help(stdout)
		return exitOK
	case "cluster", "topic", "ledger":
		return c.fail(usageError{fmt.Sprintf("%s: missing or unknown subcommand %q", rest[0], strings.Join(rest[1:], " "))}, help)
	}
	return c.fail(usageError{fmt.Sprintf("unknown command %q", rest[0])}, help)
}

// passwd prints a [[mqtt.users]] entry for the user named in args, with
// the bcrypt hash of the first line read from in.
func (c *cli) passwd(args []string, in io.Reader) int {
	help := func(w io.Writer) { fmt.Fprint(w, "Usage: quirectl passwd NAME  (the password is read from stdin)\n") }
	if len(args) != 1 || args[0] == "" || strings.HasPrefix(args[0], "-") {
		return c.fail(usageError{"passwd: want exactly one user NAME"}, help)
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(c.stderr, "quirectl passwd: reading the password: %v\n", err)
		return exitFailed
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return c.fail(usageError{"passwd: empty password on stdin"}, help)
	}
	h, err := auth.HashPassword([]byte(pw))
	if err != nil {
		fmt.Fprintf(c.stderr, "quirectl passwd: %v\n", err)
		return exitFailed
	}
	sc, err := auth.NewSCRAMCredentials([]byte(pw), auth.DefaultSCRAMIterations)
	if err != nil {
		fmt.Fprintf(c.stderr, "quirectl passwd: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(c.stdout, "[[mqtt.users]]\nname = %q\npassword_hash = %q\nscram_sha256 = %q\n", args[0], h, sc.String())
	return exitOK
}

func firstN(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (c *cli) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	c.g.register(fs)
	return fs
}

// parse parses flags anywhere in args (Go's flag package stops at the first
// argument) and returns the arguments. With max > 0, more than max arguments
// is a usage error. For the top level (max 0) parsing stops at the first
// argument, the command, whose own flag set parses the rest.
func parse(fs *flag.FlagSet, args []string, max int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if max == 0 {
			return args, nil
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if max > 0 && len(pos) > max {
		return nil, usageError{fmt.Sprintf("unexpected argument %q", pos[max])}
	}
	return pos, nil
}

// fail reports err: help for --help (exit 0), usage errors (exit 2) and
// failures (exit 1).
func (c *cli) fail(err error, help func(io.Writer)) int {
	var ue usageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		help(c.stdout)
		return exitOK
	case errors.As(err, &ue) || strings.HasPrefix(err.Error(), "flag provided but not defined") ||
		strings.Contains(err.Error(), "invalid value") || strings.Contains(err.Error(), "flag needs an argument"):
		fmt.Fprintf(c.stderr, "quirectl: %v\nRun 'quirectl --help' for usage.\n", err)
		return exitUsage
	default:
		fmt.Fprintf(c.stderr, "quirectl: %v\n", err)
		return exitFailed
	}
}

// printFlags lists fs's flags GNU-style ("--name VALUE").
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  %s\n        %s\n", strings.TrimSpace("--"+f.Name+" "+name), usage)
	})
}

// command parses a command's flags and calls do with its arguments and a
// client.
func (c *cli) command(args []string, fs *flag.FlagSet, usage string, nargs int, do func(ctx context.Context, cl *adminapi.Client, args []string) error) int {
	help := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: quirectl %s\n\nFlags:\n", usage)
		printFlags(w, fs)
	}
	pos, err := parse(fs, args, nargs)
	if err == nil && len(pos) < nargs {
		err = usageError{fmt.Sprintf("usage: quirectl %s", usage)}
	}
	if err != nil {
		return c.fail(err, help)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.g.timeout)
	defer cancel()
	if err := do(ctx, adminapi.NewClient(c.g.server), pos); err != nil {
		var se *adminapi.StatusError
		if !errors.As(err, &se) {
			err = fmt.Errorf("%w\n(is the node running? point quirectl at its [admin] addr with --server or $QUIRE_SERVER)", err)
		}
		return c.fail(err, help)
	}
	return exitOK
}

// emit prints the raw JSON answer with --json, else calls table.
func (c *cli) emit(raw []byte, v any, table func(w *tabwriter.Writer)) error {
	if c.g.json {
		_, err := c.stdout.Write(raw)
		return err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("bad answer from the server: %w", err)
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	table(w)
	return w.Flush()
}

func (c *cli) clusterStatus(args []string) int {
	fs := c.flagSet("cluster status")
	return c.command(args, fs, "cluster status [--json]", 0, func(ctx context.Context, cl *adminapi.Client, _ []string) error {
		raw, err := cl.Do(ctx, "GET", "/api/v1/cluster", nil)
		if err != nil {
			return err
		}
		var cs adminapi.Cluster
		return c.emit(raw, &cs, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "Cluster:\t%s\n", cs.ClusterName)
			leader := fmt.Sprint(cs.MetaLeader)
			if cs.MetaLeader == 0 {
				leader = "none"
			}
			fmt.Fprintf(w, "Meta leader:\t%s (%s)\n", leader, cs.MetaMode)
			if cs.Stale || cs.Error != "" {
				fmt.Fprintf(w, "Warning:\t%s\n", cs.Error)
			}
			fmt.Fprintln(w)
			fmt.Fprintln(w, "ID\tADDR\tROLES\tSTATE\tGRPC\tADMIN\tVERSION")
			for _, n := range cs.Nodes {
				id := fmt.Sprint(n.ID)
				if n.ID == cs.MetaLeader {
					id += "*"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, n.Addr, strings.Join(n.Roles, ","), n.State, n.GRPCAddr, n.AdminAddr, n.Version)
			}
		})
	})
}

func (c *cli) topicList(args []string) int {
	fs := c.flagSet("topic list")
	return c.command(args, fs, "topic list [--json]", 0, func(ctx context.Context, cl *adminapi.Client, _ []string) error {
		raw, err := cl.Do(ctx, "GET", "/api/v1/topics", nil)
		if err != nil {
			return err
		}
		var tl adminapi.TopicList
		return c.emit(raw, &tl, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "NAME\tENGINE\tPARTITIONS\tRECORDS\tSTATUS\tCREATED")
			for _, t := range tl.Topics {
				var records uint64
				bad := 0
				for _, p := range t.Shards {
					records += p.High - p.Low
					if p.Error != "" {
						bad++
					}
				}
				status := "ok"
				if bad > 0 {
					status = fmt.Sprintf("%d partition(s) unavailable", bad)
				} else if len(t.Shards) > 0 && t.Shards[0].Node != 0 {
					status = fmt.Sprintf("on-node-%d", t.Shards[0].Node)
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\n", t.Name, t.Engine, t.Partitions, records, status, t.CreatedAt.Format(time.RFC3339))
			}
		})
	})
}

func (c *cli) ledgerList(args []string) int {
	fs := c.flagSet("ledger list")
	under := fs.Bool("under-replicated", false, "only the ledgers naming a bookie that is not live")
	return c.command(args, fs, "ledger list [--under-replicated] [--json]", 0, func(ctx context.Context, cl *adminapi.Client, _ []string) error {
		raw, err := cl.Do(ctx, "GET", adminapi.LedgersPath(*under), nil)
		if err != nil {
			return err
		}
		var ll adminapi.LedgerList
		return c.emit(raw, &ll, func(w *tabwriter.Writer) {
			auditor := "none"
			if ll.Auditor != "" {
				auditor = "node " + ll.Auditor
			}
			fmt.Fprintf(w, "Live bookies:\t%s\nAuditor:\t%s\n\n", strings.Join(ll.LiveBookies, ", "), auditor)
			fmt.Fprintln(w, "ID\tSTATE\tE/QW/QA\tLAST\tENSEMBLES\tMISSING")
			for _, l := range ll.Ledgers {
				var ens []string
				for _, f := range l.Fragments {
					ens = append(ens, fmt.Sprintf("%d:%s", f.FirstEntry, strings.Join(f.Bookies, ",")))
				}
				last := "-"
				if l.State == "CLOSED" {
					last = fmt.Sprint(l.LastEntry)
				}
				missing := strings.Join(l.Missing, ",")
				if missing == "" {
					missing = "-"
				}
				fmt.Fprintf(w, "%d\t%s\t%d/%d/%d\t%s\t%s\t%s\n", l.ID, l.State, l.Ensemble, l.WriteQuorum, l.AckQuorum, last, strings.Join(ens, " "), missing)
			}
		})
	})
}

func printTopic(w *tabwriter.Writer, t adminapi.Topic) {
	fmt.Fprintf(w, "Topic:\t%s\nEngine:\t%s\nPartitions:\t%d\nCreated:\t%s\n", t.Name, t.Engine, t.Partitions, t.CreatedAt.Format(time.RFC3339))
	if t.Node != 0 {
		fmt.Fprintf(w, "Hosted by:\tnode %d\n", t.Node)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "PARTITION\tSHARD\tLOW\tHIGH\tSEALED\tERROR")
	for _, p := range t.Shards {
		fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%v\t%s\n", p.Partition, p.Shard, p.Low, p.High, p.Sealed, p.Error)
	}
}

func (c *cli) topicDescribe(args []string) int {
	fs := c.flagSet("topic describe")
	return c.command(args, fs, "topic describe NAME [--json]", 1, func(ctx context.Context, cl *adminapi.Client, a []string) error {
		raw, err := cl.Do(ctx, "GET", adminapi.TopicPath(a[0]), nil)
		if err != nil {
			return err
		}
		var t adminapi.Topic
		return c.emit(raw, &t, func(w *tabwriter.Writer) { printTopic(w, t) })
	})
}

func (c *cli) topicCreate(args []string) int {
	fs := c.flagSet("topic create")
	engine := fs.String("engine", "", "store the topic on `ENGINE` (memory, file); default: the node's storage rules decide")
	partitions := fs.Int("partitions", 1, "the number of partitions `N`, 1 to 1024")
	return c.command(args, fs, "topic create NAME [--engine ENGINE] [--partitions N] [--json]", 1, func(ctx context.Context, cl *adminapi.Client, a []string) error {
		raw, err := cl.Do(ctx, "POST", "/api/v1/topics", adminapi.CreateTopicRequest{Name: a[0], Engine: *engine, Partitions: *partitions})
		if err != nil {
			return err
		}
		var t adminapi.Topic
		return c.emit(raw, &t, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "created topic %s (engine %s, %d partition(s))\n", t.Name, t.Engine, t.Partitions)
		})
	})
}

func (c *cli) topicDelete(args []string) int {
	fs := c.flagSet("topic delete")
	return c.command(args, fs, "topic delete NAME [--json]", 1, func(ctx context.Context, cl *adminapi.Client, a []string) error {
		raw, err := cl.Do(ctx, "DELETE", adminapi.TopicPath(a[0]), nil)
		if err != nil {
			return err
		}
		var d adminapi.Deleted
		return c.emit(raw, &d, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "deleted topic %s\n", d.Deleted)
		})
	})
}
