// Package load is the MQTT load generator of benchmarks/mqtt: it runs one
// scenario against one broker over TCP and reports delivered messages per
// second, end-to-end latency and whether every message arrived exactly once.
// cmd/mqttload is its command line; run.sh runs it against Quire, Mosquitto
// and mochi-mqtt one after another and tabulates the results (WriteTable).
//
//	res, err := load.Run(ctx, load.Config{Addr: "127.0.0.1:1883",
//		Scenario: load.PointToPoint, QoS: 1, Size: 64, Clients: 4})
//	fmt.Println(res.Summary(), res.OK)
//
// # Scenarios
//
//	p2p     Clients pairs: publisher i → <prefix>/p2p/i → subscriber i
//	fanin   Clients publishers → <prefix>/fanin/i → one subscriber of <prefix>/fanin/+
//	fanout  one publisher → <prefix>/fanout → Clients subscribers
//	idle    Clients connections that only keep alive (memory per connection)
//
// Subscribers connect and subscribe first, then publishers connect, then
// traffic runs for Warmup (not measured) plus Duration (measured), then
// publishers stop and the run drains for at most Drain.
//
// # Payload
//
// Every payload starts with a 20-byte header, zero-padded to Size:
//
//	offset 0   8 bytes  send time, ns since the run's start (monotonic clock)
//	offset 8   4 bytes  publisher index
//	offset 12  8 bytes  sequence number, 0, 1, 2, … per publisher
//
// all big-endian. Publishers and subscribers are in one process, so the
// receive time minus the send time is the end-to-end latency, with no clock
// skew; a delivery received inside the measured window counts towards
// msgs/s and the latency histogram (internal/hist, within 0.8%).
//
// # Delivery check
//
// Each subscriber keeps a bitset of sequence numbers per publisher: a
// sequence seen twice is a duplicate, a payload that no publisher of this
// run sent is foreign, and after the drain every sequence a subscriber
// should have had but has not is lost. QoS 1 publications without a PUBACK
// are unacknowledged. A Result with any of these is not OK, and mqttload
// exits with status 3: a run that loses messages is not a result.
//
// # Flow control
//
// The load is a closed loop: each publisher keeps at most Window messages
// in flight end to end (published but not yet received by all its
// subscribers; fanin shares Window among its publishers), and waits for
// deliveries before it sends more. This measures the throughput a broker
// sustains without loss, instead of the rate at which it drops QoS 0
// messages from an overfull queue, and keeps every broker under its default
// per-client queue limit (1000 messages for Mosquitto and Quire). Publishes
// are buffered and written when the window is full or 4 KiB are pending;
// subscribers' PUBACKs are batched likewise (package client).
//
// With Config.Rate the load is an open loop instead: the publishers offer
// Rate messages per second between them, each message stamped with the time
// it was due rather than the time it was written, so latency includes any
// lag behind the schedule (no coordinated omission); Window still caps what
// is in flight. Closed-loop latency mixes throughput into latency (a faster
// broker pushes its load generator harder, whose own scheduling then shows
// in the tail), so run.sh compares p50/p99 also at one fixed rate that every
// broker sustains.
package load
