// Package client is a lean MQTT client for the load generator in
// benchmarks/mqtt, built on Quire's wire codec (frontends/mqtt/packet).
//
// It speaks just what a benchmark needs: CONNECT with clean start (3.1.1 or
// 5.0), SUBSCRIBE, PUBLISH at QoS 0 and 1, PUBACK, keep-alive pings and
// DISCONNECT. It does not reconnect, resend or speak QoS 2: any protocol
// surprise ends the connection and Err reports it, so that a benchmark never
// hides a failure.
//
// Why not paho: on this 2-core machine the load generator shares the CPU
// with the broker it measures, so every microsecond it spends per message
// is taken from the broker. paho.mqtt.golang hands each message through
// channels and goroutines and allocates per message; this client decodes
// into a reused packet (payloads alias the read buffer), calls OnPublish
// on the read goroutine, and batches writes: Publish only buffers (Flush
// writes), and PUBACKs queued by the read loop are written many per system
// call by one writer goroutine. Correctness of the brokers against real
// clients is tested elsewhere (frontends/mqtt tests use paho and
// mosquitto_pub/sub); here the codec's own golden and fuzz tests stand
// behind the bytes.
//
//	c, err := client.Dial(ctx, client.Options{Addr: "127.0.0.1:1883", ClientID: "sub-1",
//		OnPublish: func(p *packet.Publish) { ... }})
//	err = c.Subscribe(ctx, "bench/#", 1)
//	err = c.Publish(ctx, "bench/a", 1, payload)
//	err = c.Flush()
//	c.Close()
package client
