package load_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/quiremq/quire/benchmarks/mqtt/inproc"
	"github.com/quiremq/quire/benchmarks/mqtt/load"
	"github.com/quiremq/quire/frontends/mqtt/packet"
)

// BenchmarkQuire runs point-to-point traffic (4 pairs, 64-byte payloads)
// through Quire's broker in this process, on the memory engine and on the
// file engine with sync=batch, so that the broker can be profiled under the
// load of run.sh:
//
//	go test ./benchmarks/mqtt/load -run '^$' -bench Quire/memory/qos1 -benchtime 200000x -cpuprofile cpu.out
//	go tool pprof -top -lines load.test cpu.out
//
// One op is one message delivered; msgs/s, p50-µs and p99-µs are reported.
func BenchmarkQuire(b *testing.B) {
	for _, engine := range []string{"memory", "file"} {
		for _, qos := range []packet.QoS{0, 1} {
			b.Run(fmt.Sprintf("%s/qos%d", engine, qos), func(b *testing.B) {
				addr := inproc.Start(b, engine)
				const pairs = 4
				b.ResetTimer()
				res, err := load.Run(context.Background(), load.Config{Addr: addr, Scenario: load.PointToPoint,
					QoS: qos, Size: 64, Clients: pairs, Messages: max(1, b.N/pairs),
					Warmup: time.Nanosecond, Duration: 10 * time.Minute})
				if err != nil {
					b.Fatal(err)
				}
				if !res.OK {
					b.Fatalf("delivery check failed: %s", res.Summary())
				}
				b.ReportMetric(res.MsgsPerSec, "msgs/s")
				b.ReportMetric(res.P50, "p50-µs")
				b.ReportMetric(res.P99, "p99-µs")
			})
		}
	}
}
