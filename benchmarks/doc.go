// Package benchmarks holds load generators and side-by-side runs of Quire
// against its peers on the same machine in the same run (Mosquitto and
// mochi-mqtt for MQTT, NATS JetStream for persistent streams). Engine-level
// benchmarks live beside each engine (`go test -bench` in engines/...,
// suite in shard/shardtest); `make bench` runs them all.
package benchmarks
