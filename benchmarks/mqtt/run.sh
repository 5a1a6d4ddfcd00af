#!/usr/bin/env bash
# benchmarks/mqtt/run.sh: Quire's MQTT broker against Mosquitto 2 and
# mochi-mqtt v2 on loopback, one broker after another in one run, then a
# Markdown table (msgs/s, p50, p99 and Quire's ratio to each peer) and the
# idle-connection memory test.
#
#   benchmarks/mqtt/run.sh              # everything (about 15-25 minutes)
#   benchmarks/mqtt/run.sh idle         # only the idle test (15,000 connections, ~2 minutes)
#   benchmarks/mqtt/run.sh throughput   # only the throughput table
#   DURATION=2s WARMUP=1s IDLE_CONNS=3000 benchmarks/mqtt/run.sh   # a quick look
#
# Setups (the "setup" column of the table):
#   memory   quire:     [storage] default_engine = "memory"
#            mosquitto: persistence false
#            mochi:     no storage hook
#   durable  quire:     default_engine = "file", [storage.file] sync = "batch":
#                       a QoS 1 PUBLISH is fsynced before its PUBACK
#            mosquitto: persistence true. Mosquitto keeps everything in memory
#                       and writes the whole database to mosquitto.db every
#                       autosave_interval (default 1800 s) and at a clean
#                       shutdown, with no fsync per message: a crash loses
#                       every message since the last save, acknowledged or
#                       not. It is the closest setting it has (2.0 has no
#                       per-message durability), and much weaker than Quire's.
#            mochi:     pebble storage hook with Mode Sync: each outbound QoS 1
#                       message (a subscriber's inflight entry) is written
#                       with fsync before the publisher's PUBACK; the inbound
#                       message itself is not stored.
# The durable setup runs QoS 1 only (no broker persists QoS 0).
#
# Latency at a fixed rate: after its throughput runs, each broker also runs
# p2p at RATE msgs/s offered (open loop, default 10000; 0 skips it) with
# RATE_SIZE-byte payloads (1024), QoS 0 and 1 (durable: 1). Closed-loop p99
# mixes throughput into latency; these rows compare p50/p99 at one load that
# every broker sustains (the "p2p @ 10000/s" rows of the table).
#
# Environment: DURATION (5s) and WARMUP (2s) per run; P2P_CLIENTS (4 pairs),
# FAN_CLIENTS (16); QOS_MEMORY ("0 1"), SIZES ("64 1024"), SCENARIOS ("p2p
# fanin fanout"); BROKERS (all six: quire-memory quire-durable
# mosquitto-memory mosquitto-durable mochi-memory mochi-durable); IDLE_CONNS
# (15000, 0 skips the idle test), IDLE_PROCS (4 client processes: one
# process may hold at most 20,000 files), IDLE_BROKERS ("quire mosquitto
# mochi"); IDLE_HOLD (10 s: how long the connections settle before the
# broker's RSS is read again); MQTT (4: every client speaks 3.1.1; 5: MQTT 5.0); ROUNDS (1: the
# whole broker sequence is run that many times, and the table shows each
# broker's median run: on a shared machine, load from elsewhere then hits
# every broker alike); QUIRE_B (a second quire binary, e.g. one built from
# an older commit: brokers "quireb-memory" and "quireb-durable" run it, for
# an A/B comparison within one run); OUT (a new directory under /tmp), where results.jsonl,
# table.md and each broker's log are kept.
#
# The idle test: the broker starts (memory setup), its RSS is read after 2 s,
# IDLE_PROCS mqttload processes open IDLE_CONNS/IDLE_PROCS connections each
# (MQTT CONNECT, keep-alive 300 s, then nothing), and IDLE_HOLD after the last
# one is up the RSS is read again: the growth divided by the connections is
# the "RSS growth KiB/conn" column. For Quire the node's /metrics is read at
# the same two moments, and the table splits the growth into goroutines, Go
# stacks and Go heap in use per connection. The broker holds one socket per
# connection, so IDLE_CONNS must stay under its limits: a process may hold at
# most 20,000 open files, and a Quire node serves at most 15,000 protocol
# connections (internal/node maxConnections).
set -euo pipefail

mode=${1:-all}
case $mode in
all | idle | throughput) ;;
*)
	echo "usage: $0 [all|idle|throughput]" >&2
	exit 2
	;;
esac

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/.cache/bin
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
P2P_CLIENTS=${P2P_CLIENTS:-4}
FAN_CLIENTS=${FAN_CLIENTS:-16}
QOS_MEMORY=${QOS_MEMORY:-"0 1"}
SIZES=${SIZES:-"64 1024"}
SCENARIOS=${SCENARIOS:-"p2p fanin fanout"}
BROKERS=${BROKERS-"quire-memory mosquitto-memory mochi-memory quire-durable mosquitto-durable mochi-durable"}
IDLE_CONNS=${IDLE_CONNS:-15000}
IDLE_PROCS=${IDLE_PROCS:-4}
IDLE_BROKERS=${IDLE_BROKERS:-"quire mosquitto mochi"}
IDLE_HOLD=${IDLE_HOLD:-10}
[[ $mode == idle ]] && BROKERS=""
[[ $mode == throughput ]] && IDLE_CONNS=0
RATE=${RATE:-10000}
RATE_SIZE=${RATE_SIZE:-1024}
MQTT=${MQTT:-4}
ROUNDS=${ROUNDS:-1}
OUT=${OUT:-$(mktemp -d /tmp/quire-bench-mqtt.XXXXXX)}
mkdir -p "$OUT"
results=$OUT/results.jsonl
: >"$results"

log() { echo "run.sh: $*" >&2; }

# --- what it needs -------------------------------------------------------
"$root/tools/install-deb.sh" mosquitto mosquitto
"$root/tools/install-deb.sh" curl curl
mkdir -p "$bin"
log "building quire, mqttload and mochi-host into $bin"
(cd "$root" && CGO_ENABLED=0 go build -o "$bin/quire" ./cmd/quire && go build -o "$bin/mqttload" ./benchmarks/mqtt/cmd/mqttload)
# mochi-mqtt is a dependency of its own throwaway module only, never of Quire's.
(cd "$root/benchmarks/mqtt/mochi-host" && GOBIN=$bin go install .)
ulimit -n "$(ulimit -Hn)"

# --- brokers ---------------------------------------------------------------
broker_pid=""
admin="" # a Quire node's admin port (its /metrics)
cleanup() {
	if [[ -n $broker_pid ]]; then kill "$broker_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

free_port() {
	local p
	for _ in $(seq 100); do
		# Below the ephemeral range (32768 up), where a port that refuses
		# connections may still be bound by an outgoing connection.
		p=$((10000 + RANDOM % 20000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	log "no free port found"
	exit 1
}

wait_port() {
	local port=$1
	for _ in $(seq 600); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
		if ! kill -0 "$broker_pid" 2>/dev/null; then
			log "broker exited; its log:"
			tail -20 "$OUT/$name.log" >&2
			exit 1
		fi
		sleep 0.1
	done
	log "broker did not listen on $port within 60 s"
	exit 1
}

# start_broker BROKER SETUP: starts it on a free port, sets broker_pid and port.
start_broker() {
	local broker=$1 setup=$2 dir
	name=$broker-$setup
	dir=$OUT/$name
	rm -rf "$dir"
	mkdir -p "$dir"
	port=$(free_port)
	case $broker in
	quire | quireb)
		local engine=memory grpc quire=$bin/quire
		[[ $broker == quireb ]] && quire=${QUIRE_B:?QUIRE_B names the quireb binary}
		[[ $setup == durable ]] && engine=file
		grpc=$(free_port)
		admin=$(free_port)
		cat >"$dir/quire.toml" <<-EOF
			node_id = 1
			data_dir = "$dir/data"
			meta_addrs = ["1@127.0.0.1:$grpc"]
			[log]
			level = "warn"
			[grpc]
			addr = "127.0.0.1:$grpc"
			[admin]
			addr = "127.0.0.1:$admin"
			[mqtt]
			tcp = "127.0.0.1:$port"
			tls = ""
			ws = ""
			wss = ""
			quic = ""
			[kafka]
			addr = ""
			[amqp]
			addr = ""
			[bookie]
			enabled = false
			[storage]
			default_engine = "$engine"
			[storage.file]
			sync = "batch"
		EOF
		"$quire" start --config "$dir/quire.toml" >"$OUT/$name.log" 2>&1 &
		;;
	mosquitto)
		local persist=false
		[[ $setup == durable ]] && persist=true
		cat >"$dir/mosquitto.conf" <<-EOF
			listener $port 127.0.0.1
			allow_anonymous true
			user root
			persistence $persist
			persistence_location $dir/
			log_dest stderr
			log_type error
			log_type warning
		EOF
		mosquitto -c "$dir/mosquitto.conf" >"$OUT/$name.log" 2>&1 &
		;;
	mochi)
		local args=()
		[[ $setup == durable ]] && args=(-pebble "$dir/pebble" -sync)
		"$bin/mochi-host" -addr "127.0.0.1:$port" "${args[@]}" >"$OUT/$name.log" 2>&1 &
		;;
	esac
	broker_pid=$!
	wait_port "$port"
	sleep 1
	log "$name listening on 127.0.0.1:$port (pid $broker_pid)"
}

stop_broker() {
	kill "$broker_pid" 2>/dev/null || true
	for _ in $(seq 100); do
		kill -0 "$broker_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$broker_pid" 2>/dev/null || true
	wait "$broker_pid" 2>/dev/null || true
	broker_pid=""
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# go_stats: "goroutines stack_bytes heap_inuse_bytes" from a Quire node's
# /metrics (the Go collector's series).
go_stats() {
	curl -sf "http://127.0.0.1:$admin/metrics" | awk '
		/^go_goroutines / {g = $2}
		/^go_memstats_stack_inuse_bytes / {s = $2}
		/^go_memstats_heap_inuse_bytes / {h = $2}
		END {printf "%d %d %d\n", g, s, h}'
}

# --- throughput --------------------------------------------------------------
# load_run SCENARIO QOS SIZE CLIENTS [mqttload flags]: one run against the
# current broker, its JSON line appended to results.
load_run() {
	local sc=$1 qos=$2 size=$3 clients=$4 rc=0
	shift 4
	"$bin/mqttload" -addr "127.0.0.1:$port" -scenario "$sc" -qos "$qos" -size "$size" -clients "$clients" \
		-warmup "$WARMUP" -duration "$DURATION" -mqtt "$MQTT" -json -broker "$broker" -setup "$setup" "$@" \
		>>"$results" 2>>"$OUT/mqttload.log" || rc=$?
	case $rc in
	0) ;;
	3) log "$b $sc qos=$qos size=$size $*: messages lost or duplicated (see $OUT/mqttload.log)" ;;
	*) log "$b $sc qos=$qos size=$size $*: run failed (exit $rc): $(tail -1 "$OUT/mqttload.log")" ;;
	esac
	tail -1 "$results" | cut -c1-200 >&2
}

for round in $(seq "$ROUNDS"); do
[[ $ROUNDS -gt 1 ]] && log "round $round of $ROUNDS"
for b in $BROKERS; do
	broker=${b%-*} setup=${b#*-}
	start_broker "$broker" "$setup"
	qoss=$QOS_MEMORY
	[[ $setup == durable ]] && qoss=1
	for qos in $qoss; do
		for size in $SIZES; do
			for sc in $SCENARIOS; do
				clients=$FAN_CLIENTS
				[[ $sc == p2p ]] && clients=$P2P_CLIENTS
				load_run "$sc" "$qos" "$size" "$clients"
			done
		done
		if [[ $RATE != 0 ]]; then
			load_run p2p "$qos" "$RATE_SIZE" "$P2P_CLIENTS" -rate "$RATE"
		fi
	done
	stop_broker
done
done

# --- idle connections --------------------------------------------------------
if [[ $IDLE_CONNS -gt 0 ]]; then
	per=$((IDLE_CONNS / IDLE_PROCS))
	total=$((per * IDLE_PROCS))
	for broker in $IDLE_BROKERS; do
		start_broker "$broker" memory
		sleep 2
		rss0=$(rss_kib "$broker_pid")
		go0="0 0 0"
		[[ $broker == quire ]] && go0=$(go_stats)
		start=$(date +%s.%N)
		pids=()
		for i in $(seq "$IDLE_PROCS"); do
			rm -f "$OUT/idle-ready-$i"
			"$bin/mqttload" -addr "127.0.0.1:$port" -scenario idle -clients "$per" -duration 30m \
				-prefix "idle-$i-$RANDOM" -ready-file "$OUT/idle-ready-$i" >>"$OUT/mqttload.log" 2>&1 &
			pids+=($!)
		done
		ready=0
		for _ in $(seq 3000); do
			ready=$(find "$OUT" -maxdepth 1 -name 'idle-ready-*' | wc -l)
			[[ $ready -eq $IDLE_PROCS ]] && break
			for p in "${pids[@]}"; do
				if ! kill -0 "$p" 2>/dev/null; then
					log "an idle client process ended early: $(tail -2 "$OUT/mqttload.log")"
					break 2
				fi
			done
			sleep 0.1
		done
		connect_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
		sleep "$IDLE_HOLD"
		rss1=$(rss_kib "$broker_pid")
		go1="0 0 0"
		[[ $broker == quire ]] && go1=$(go_stats)
		# goroutines, stack KiB and heap KiB per connection (0 for the peers)
		read -r gor stk hp < <(awk -v a="$go0" -v b="$go1" -v n="$total" 'BEGIN {
			split(a, x); split(b, y)
			printf "%.2f %.2f %.2f\n", (y[1] - x[1]) / n, (y[2] - x[2]) / 1024 / n, (y[3] - x[3]) / 1024 / n }')
		kill "${pids[@]}" 2>/dev/null || true
		dropped=0
		for p in "${pids[@]}"; do
			rc=0
			wait "$p" || rc=$?
			[[ $rc -ne 0 ]] && dropped=$((dropped + 1))
		done
		ok=true
		if [[ $ready -ne $IDLE_PROCS || $dropped -ne 0 ]]; then ok=false; fi
		kib=$(awk -v a="$rss0" -v b="$rss1" -v n="$total" 'BEGIN { printf "%.2f", (b - a) / n }')
		split=""
		[[ $broker == quire ]] && split="; goroutines $gor, stacks $stk KiB, heap $hp KiB per conn"
		log "$broker: $total idle connections: RSS $rss0 KiB -> $rss1 KiB = $kib KiB/conn$split (processes failed: $dropped)"
		printf '{"broker":"%s","setup":"memory","scenario":"idle","qos":0,"size":0,"clients":%d,"duration_s":0,"sent":0,"expected":0,"received":0,"lost":%d,"duplicates":0,"foreign":0,"unacked":0,"msgs_per_s":0,"p50_us":0,"p99_us":0,"max_us":0,"connect_s":%s,"ok":%s,"rss_kib_per_conn":%s,"goroutines_per_conn":%s,"stack_kib_per_conn":%s,"heap_kib_per_conn":%s}\n' \
			"$broker" "$total" "$dropped" "$connect_s" "$ok" "$kib" "$gor" "$stk" "$hp" >>"$results"
		stop_broker
	done
fi

"$bin/mqttload" table "$results" | tee "$OUT/table.md"
log "results in $OUT (results.jsonl, table.md, broker logs)"
