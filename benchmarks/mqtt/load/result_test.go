package load_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/quiremq/quire/benchmarks/mqtt/load"
)

// TestTable: results read back from JSON lines make one row per setup and
// scenario with the median run of each broker and Quire's ratio to each
// peer, LOSS when any run failed the delivery check and no ratio against
// it, and an idle table.
func TestTable(t *testing.T) {
	rs := []load.Result{
		{Broker: "quire", Setup: "memory", Scenario: load.PointToPoint, QoS: 1, Size: 64, Clients: 4, MsgsPerSec: 10000, P50: 300, P99: 2000, OK: true},
		{Broker: "quire", Setup: "memory", Scenario: load.PointToPoint, QoS: 1, Size: 64, Clients: 4, MsgsPerSec: 30000, P50: 100, P99: 900, OK: true},
		{Broker: "quire", Setup: "memory", Scenario: load.PointToPoint, QoS: 1, Size: 64, Clients: 4, MsgsPerSec: 50000, P50: 50, P99: 500, OK: true},
		{Broker: "mosquitto", Setup: "memory", Scenario: load.PointToPoint, QoS: 1, Size: 64, Clients: 4, MsgsPerSec: 20000, P50: 150, P99: 1000, OK: true},
		{Broker: "mochi", Setup: "memory", Scenario: load.PointToPoint, QoS: 1, Size: 64, Clients: 4, MsgsPerSec: 40000, OK: true},
		{Broker: "mochi", Setup: "memory", Scenario: load.PointToPoint, QoS: 1, Size: 64, Clients: 4, MsgsPerSec: 40000, Lost: 5, OK: false},
		{Broker: "quire", Setup: "memory", Scenario: load.PointToPoint, QoS: 1, Size: 1024, Clients: 4, Rate: 10000, MsgsPerSec: 10000, P50: 200, P99: 900, OK: true},
		{Broker: "mosquitto", Setup: "memory", Scenario: load.PointToPoint, QoS: 1, Size: 1024, Clients: 4, Rate: 10000, MsgsPerSec: 8000, P50: 300, P99: 4000, OK: true},
		{Broker: "quire", Setup: "memory", Scenario: load.Idle, Clients: 15000, RSSPerConn: 9.5,
			GoroutinesPerConn: 2, StackPerConn: 5.3, HeapPerConn: 3.5, OK: true},
		{Broker: "mosquitto", Setup: "memory", Scenario: load.Idle, Clients: 15000, RSSPerConn: 0.7, OK: true},
	}
	var lines bytes.Buffer
	for _, r := range rs {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		lines.Write(append(b, '\n', '\n'))
	}
	back, err := load.ReadResults(&lines)
	if err != nil || len(back) != len(rs) {
		t.Fatalf("read back %d results, %v", len(back), err)
	}
	var out strings.Builder
	if err := load.WriteTable(&out, back); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	t.Log("\n" + got)
	for _, want := range []string{
		"| memory | p2p | 1 | 64 | 4 | 30000 | 100 | 900 | 20000 | 150 | 1000 | LOSS (lost 5, dup 0, unacked 0) | – | – | 1.50× | – |",
		"| memory | p2p @ 10000/s | 1 | 1024 | 4 | 10000 | 200 | 900 | 8000 | 300 | 4000 | – | – | – | 1.25× | – |",
		"| quire | memory | 15000 | 0.0 | 0 | 9.5 | 2.00 | 5.3 | 3.5 |",
		"| mosquitto | memory | 15000 | 0.0 | 0 | 0.7 | – | – | – |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if _, err := load.ReadResults(strings.NewReader("{not json\n")); err == nil {
		t.Error("bad JSON line: no error")
	}
}
