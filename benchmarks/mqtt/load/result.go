package load

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Result is what one Run measured. Counts cover the whole run (warm-up and
// drain included); rates and latencies only the measured window.
type Result struct {
	// Broker and Setup label the result for the table (mqttload -broker
	// quire -setup memory); Run leaves them empty.
	Broker string `json:"broker,omitempty"`
	Setup  string `json:"setup,omitempty"`

	Scenario    Scenario `json:"scenario"`
	QoS         int      `json:"qos"`
	Size        int      `json:"size"`
	Clients     int      `json:"clients"`
	Publishers  int      `json:"publishers,omitempty"`
	Subscribers int      `json:"subscribers,omitempty"`
	Window      int      `json:"window,omitempty"`
	Rate        float64  `json:"rate,omitempty"` // offered msgs/s (Config.Rate); 0: closed loop
	Warmup      float64  `json:"warmup_s,omitempty"`
	Duration    float64  `json:"duration_s"`

	Sent       uint64 `json:"sent"`       // messages published
	Expected   uint64 `json:"expected"`   // deliveries due: sent × subscribers of each
	Received   uint64 `json:"received"`   // distinct deliveries
	Lost       uint64 `json:"lost"`       // Expected − Received (idle: connections dropped)
	Duplicates uint64 `json:"duplicates"` // deliveries of a message a subscriber had already
	Foreign    uint64 `json:"foreign"`    // deliveries of no message of this run
	Unacked    uint64 `json:"unacked"`    // QoS 1 publications never acknowledged

	MsgsPerSec float64 `json:"msgs_per_s"` // deliveries per second in the measured window
	P50        float64 `json:"p50_us"`     // end-to-end latency, microseconds
	P99        float64 `json:"p99_us"`
	Max        float64 `json:"max_us"`

	ConnectSeconds float64 `json:"connect_s,omitempty"` // idle: time to open every connection

	// OK: every message was delivered exactly once (and acknowledged, QoS
	// 1), and something was delivered in the window. A result that is not
	// OK is not a benchmark result.
	OK bool `json:"ok"`

	// RSSPerConn is filled in by run.sh for idle runs: the broker's RSS
	// growth per connection, in KiB.
	RSSPerConn float64 `json:"rss_kib_per_conn,omitempty"`
	// GoroutinesPerConn, StackPerConn and HeapPerConn split a Go broker's
	// growth (run.sh reads Quire's /metrics): goroutines, KiB of goroutine
	// stacks and KiB of heap in use (go_memstats_heap_inuse_bytes) per
	// connection. Zero for brokers that do not report them.
	GoroutinesPerConn float64 `json:"goroutines_per_conn,omitempty"`
	StackPerConn      float64 `json:"stack_kib_per_conn,omitempty"`
	HeapPerConn       float64 `json:"heap_kib_per_conn,omitempty"`
}

// Summary is a one-line human description.
func (r *Result) Summary() string {
	if r.Scenario == Idle {
		return fmt.Sprintf("idle clients=%d connected in %.1fs, dropped=%d ok=%v", r.Clients, r.ConnectSeconds, r.Lost, r.OK)
	}
	sc := string(r.Scenario)
	if r.Rate > 0 {
		sc += fmt.Sprintf(" rate=%.0f/s", r.Rate)
	}
	return fmt.Sprintf("%s qos=%d size=%d clients=%d: %.0f msgs/s p50=%.0fµs p99=%.0fµs max=%.0fµs | sent=%d expected=%d received=%d lost=%d dup=%d foreign=%d unacked=%d ok=%v",
		sc, r.QoS, r.Size, r.Clients, r.MsgsPerSec, r.P50, r.P99, r.Max,
		r.Sent, r.Expected, r.Received, r.Lost, r.Duplicates, r.Foreign, r.Unacked, r.OK)
}

// ReadResults reads results written one JSON object a line (mqttload
// -json), skipping blank lines.
func ReadResults(in io.Reader) ([]Result, error) {
	var out []Result
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var r Result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, fmt.Errorf("load: results line %d: %w", n, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// Peers are the brokers compared, Quire first; the table shows Quire's
// throughput as a multiple of each other one's.
var Peers = []string{"quire", "mosquitto", "mochi"}

type rowKey struct {
	setup    string
	scenario Scenario
	qos      int
	size     int
	clients  int
	rate     float64
}

// WriteTable writes a Markdown table of results: one row per setup,
// scenario, QoS, payload size and client count; for each broker msgs/s,
// p50 and p99 (µs); and Quire's msgs/s over each peer's. When a broker has
// several results for a row (run.sh ROUNDS > 1), the one with the median
// msgs/s stands for it. A broker with any result that is not OK shows as
// LOSS (lost/duplicated/unacknowledged counts of the worst one) and gets no
// ratio. Idle results get a table of their own.
func WriteTable(w io.Writer, results []Result) error {
	runs := map[rowKey]map[string][]Result{}
	var keys []rowKey
	var idle []Result
	for _, r := range results {
		if r.Scenario == Idle {
			idle = append(idle, r)
			continue
		}
		k := rowKey{r.Setup, r.Scenario, r.QoS, r.Size, r.Clients, r.Rate}
		if runs[k] == nil {
			runs[k] = map[string][]Result{}
			keys = append(keys, k)
		}
		runs[k][r.Broker] = append(runs[k][r.Broker], r)
	}
	rows := map[rowKey]map[string]Result{}
	for k, byBroker := range runs {
		rows[k] = map[string]Result{}
		for broker, rs := range byBroker {
			rows[k][broker] = representative(rs)
		}
	}
	var b strings.Builder
	if len(keys) > 0 {
		b.WriteString("| setup | scenario | qos | size | clients |")
		for _, p := range Peers {
			fmt.Fprintf(&b, " %s msgs/s | p50 µs | p99 µs |", p)
		}
		for _, p := range Peers[1:] {
			fmt.Fprintf(&b, " quire/%s |", p)
		}
		b.WriteString("\n|" + strings.Repeat("---|", 5+3*len(Peers)+len(Peers)-1) + "\n")
	}
	for _, k := range keys {
		sc := string(k.scenario)
		if k.rate > 0 {
			sc += fmt.Sprintf(" @ %.0f/s", k.rate)
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d |", k.setup, sc, k.qos, k.size, k.clients)
		row := rows[k]
		for _, p := range Peers {
			r, ok := row[p]
			switch {
			case !ok:
				b.WriteString(" – | – | – |")
			case !r.OK:
				fmt.Fprintf(&b, " LOSS (lost %d, dup %d, unacked %d) | – | – |", r.Lost, r.Duplicates, r.Unacked)
			default:
				fmt.Fprintf(&b, " %.0f | %.0f | %.0f |", r.MsgsPerSec, r.P50, r.P99)
			}
		}
		q, qok := row[Peers[0]]
		for _, p := range Peers[1:] {
			r, ok := row[p]
			if !qok || !ok || !q.OK || !r.OK || r.MsgsPerSec == 0 {
				b.WriteString(" – |")
				continue
			}
			fmt.Fprintf(&b, " %.2f× |", q.MsgsPerSec/r.MsgsPerSec)
		}
		b.WriteString("\n")
	}
	if len(idle) > 0 {
		slices.SortStableFunc(idle, func(a, c Result) int { return strings.Compare(a.Broker, c.Broker) })
		b.WriteString("\n| broker | setup | idle connections | connect s | dropped | RSS growth KiB/conn | goroutines/conn | Go stacks KiB/conn | Go heap KiB/conn |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, r := range idle {
			fmt.Fprintf(&b, "| %s | %s | %d | %.1f | %d | %.1f | %s | %s | %s |\n", r.Broker, r.Setup, r.Clients, r.ConnectSeconds, r.Lost, r.RSSPerConn,
				orDash(r.GoroutinesPerConn, "%.2f"), orDash(r.StackPerConn, "%.1f"), orDash(r.HeapPerConn, "%.1f"))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// orDash formats v, or "–" when it is zero (not reported).
func orDash(v float64, format string) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf(format, v)
}

// representative is the worst result that is not OK, if any, else the one
// with the median msgs/s (the lower median for an even count).
func representative(rs []Result) Result {
	var bad *Result
	for i := range rs {
		r := &rs[i]
		if !r.OK && (bad == nil || r.Lost+r.Duplicates+r.Unacked > bad.Lost+bad.Duplicates+bad.Unacked) {
			bad = r
		}
	}
	if bad != nil {
		return *bad
	}
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b Result) int { return cmp.Compare(a.MsgsPerSec, b.MsgsPerSec) })
	return sorted[(len(sorted)-1)/2]
}
