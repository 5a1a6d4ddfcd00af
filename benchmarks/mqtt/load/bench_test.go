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

// BenchmarkQuire runs point-to-point traffic (4 pairs, 64-byte and 1 KiB
// payloads) through Quire's broker in this process, on the memory engine and on the
// file engine with sync=batch, so that the broker can be profiled under the
// load of run.sh:
//
//	go test ./benchmarks/mqtt/load -run '^$' -bench Quire/memory/qos1/64 -benchtime 200000x -cpuprofile cpu.out
//	go tool pprof -top -lines load.test cpu.out
//
// One op is one message delivered; msgs/s, p50-µs and p99-µs are reported.
func BenchmarkQuire(b *testing.B) {
	for _, engine := range []string{"memory", "file"} {
		for _, qos := range []packet.QoS{0, 1} {
			for _, size := range []int{64, 1024} {
				b.Run(fmt.Sprintf("%s/qos%d/%d", engine, qos, size), func(b *testing.B) {
					benchQuire(b, engine, qos, size)
				})
			}
		}
	}
}

func benchQuire(b *testing.B, engine string, qos packet.QoS, size int) {
	addr := inproc.Start(b, engine)
	const pairs = 4
	b.ResetTimer()
	res, err := load.Run(context.Background(), load.Config{Addr: addr, Scenario: load.PointToPoint,
		QoS: qos, Size: size, Clients: pairs, Messages: max(1, b.N/pairs),
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
}
