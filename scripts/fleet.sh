#!/usr/bin/env bash
# A fleet of shardmq boxes on this machine: a root shardmq and three edge shardmq
# processes, each edge bridged to the root ([[bridge]] with topics
# [{ pattern = "fleet/#", direction = "in" }]), subscribers spread evenly
# (round-robin) over the edges and one publisher at the root; then the same
# scenario against one shardmq holding every subscriber. Every message must reach
# every subscriber: the load generator's own accounting (lost, duplicated,
# reordered) decides, and the script fails if any delivery is missing.
# Each layout runs twice: closed loop (the publisher keeps the generator's default
# window of deliveries outstanding: the most deliveries per second, with the
# latency of full queues), then at a fixed rate (--rate, well below both layouts'
# capacity: the latency of the path itself).
# Prints deliveries per second and latency (p50, p99) for each run, and writes
# the generator's JSON for each plus summary.json under
# bench-results/fleet-<run-id>/ (bench-results/fleet-latest points there).
# Usage: scripts/fleet.sh [--subscribers N] [--duration S] [--qos Q] [--rate R]
#                         [--quick] [--no-build]
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

subscribers=15000
duration=10
qos=1
rate=5
build=1
edges=3

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --subscribers N   subscribers in total, spread over the edges (default 15000)
  --duration S      measured window in seconds (default 10)
  --qos Q           QoS of the publishes, subscriptions and bridge topic (default 1)
  --rate R          messages/s of the fixed-rate runs (default 5: 75 000
                    deliveries/s to 15 000 subscribers)
  --quick           1500 subscribers, 3 s
  --no-build        use the binaries already in target/release
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --subscribers) subscribers=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --qos) qos=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --quick) subscribers=1500; duration=3; shift ;;
        --no-build) build=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "fleet: unknown option $1 (--help lists them)" >&2; exit 2 ;;
    esac
done
case $qos in 0 | 1 | 2) ;; *) echo "fleet: --qos must be 0, 1 or 2" >&2; exit 2 ;; esac
if ! [ "$subscribers" -ge "$edges" ] 2>/dev/null; then
    echo "fleet: --subscribers must be at least $edges" >&2
    exit 2
fi

# Every process may hold as many descriptors as the hard limit allows: the
# generator holds all the subscribers' sockets, each edge its share of them.
ulimit -n "$(ulimit -Hn)"
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ $((subscribers + 1000)) -gt "$nofile" ]; then
    echo "fleet: $subscribers subscribers need more than the open-file limit of $nofile" >&2
    exit 2
fi

if [ "$build" = 1 ]; then
    cargo build --release --workspace
fi
for bin in target/release/shardmq target/release/shardmq-loadtest; do
    [ -x "$bin" ] || { echo "fleet: $bin is missing (build first)" >&2; exit 2; }
done

run_id=$(date +%Y%m%d-%H%M%S)
run_dir=bench-results/fleet-$run_id
mkdir -p "$run_dir"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fleet.XXXXXX")
pids=()

# Stops every broker this script started (by its process id) and waits for it.
stop_all() {
    local pid
    for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
    for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid" 2>/dev/null || true; done
    pids=()
}

cleanup() {
    stop_all
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port (the kernel picks it; nothing else takes it in between,
# as a rule, on a machine where ports are not handed out fast).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# broker NAME PORT [BRIDGE_TO_PORT]: writes NAME.toml and starts shardmq on it.
broker() {
    local name=$1 port=$2 root=${3:-} conf=$tmp/$1.toml
    cat >"$conf" <<EOF
listeners = ["127.0.0.1:$port"]
max_queued_messages = 100000
max_queued_bytes = 16777216
sys_interval = 0
log_level = "info"
EOF
    if [ -n "$root" ]; then
        cat >>"$conf" <<EOF

[[bridge]]
name = "root"
address = "127.0.0.1:$root"
client_id = "fleet-$name"
clean_session = true
keepalive = 60
topics = [{ pattern = "fleet/#", direction = "in", qos = $qos }]
EOF
    fi
    target/release/shardmq --config "$conf" >"$run_dir/$name.log" 2>&1 &
    pids+=($!)
    echo "$!" >"$tmp/$name.pid"
}

wait_listening() {
    local port=$1 i
    for i in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "fleet: nothing listens on 127.0.0.1:$port after 10 s" >&2
    return 1
}

wait_bridged() {
    local name=$1 i
    for i in $(seq 100); do
        if grep -q "bridge connected" "$run_dir/$name.log"; then return 0; fi
        sleep 0.1
    done
    echo "fleet: $name's bridge to the root is not connected after 10 s (see $run_dir/$name.log)" >&2
    return 1
}

loadtest() {
    local label=$1
    shift
    # The generator's exit status is 1 when the run failed its checks (loss,
    # duplicates, disconnects); the JSON says why, and the summary below fails.
    target/release/shardmq-loadtest fanout --clients "$subscribers" --publishers 1 \
        --qos "$qos" --duration "$duration" --topic-prefix "fleet/$run_id/$label" \
        --label "$label" --quiet --json "$run_dir/$label.json" \
        --connect-timeout 120 --drain-timeout 30 "$@" || true
    [ -s "$run_dir/$label.json" ] || { echo "fleet: $label wrote no results" >&2; return 1; }
}

echo "fleet: $subscribers subscribers, 1 publisher, QoS $qos, ${duration} s; results in $run_dir"

# 1. The tree: root, then the edges bridged to it.
root_port=$(free_port)
broker root "$root_port"
wait_listening "$root_port"
edge_addrs=()
for k in $(seq "$edges"); do
    p=$(free_port)
    broker "edge$k" "$p" "$root_port"
    wait_listening "$p"
    edge_addrs+=("127.0.0.1:$p")
done
for k in $(seq "$edges"); do wait_bridged "edge$k"; done
sub_brokers=$(IFS=,; echo "${edge_addrs[*]}")
echo "fleet: root 127.0.0.1:$root_port, edges $sub_brokers"
for mode in "" -rate; do
    extra=()
    if [ "$mode" = -rate ]; then extra=(--rate "$rate"); fi
    loadtest "fleet$mode" --broker "127.0.0.1:$root_port" --sub-brokers "$sub_brokers" \
        --broker-name "root+${edges}edges" ${extra[@]+"${extra[@]}"}
done
stop_all

# 2. One box: the same subscribers and publisher on one shardmq.
single_port=$(free_port)
broker single "$single_port"
wait_listening "$single_port"
single_pid=$(cat "$tmp/single.pid")
for mode in "" -rate; do
    extra=()
    if [ "$mode" = -rate ]; then extra=(--rate "$rate"); fi
    loadtest "single$mode" --broker "127.0.0.1:$single_port" --broker-pid "$single_pid" \
        --broker-name one-box ${extra[@]+"${extra[@]}"}
done
stop_all

python3 - "$run_dir" "$subscribers" "$qos" "$duration" "$rate" <<'EOF'
import json, sys
run_dir, subs, qos, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rate = sys.argv[5]
rows, bad = [], []
for label in ("fleet", "single", "fleet-rate", "single-rate"):
    r = json.load(open(f"{run_dir}/{label}.json"))
    lat = r.get("latency_us") or {}
    row = {
        "layout": label.split("-")[0],
        "run": label,
        "pacing": f"{rate} msgs/s" if label.endswith("-rate") else "closed loop",
        "broker": r["broker_name"],
        "subscribers": r["subscribers"],
        "publishers": r["publishers"],
        "qos": r["effective_qos"],
        "published_per_s": r["published_per_s"],
        "delivered_per_s": r["delivered_per_s"],
        "latency_p50_ms": lat.get("p50", float("nan")) / 1000,
        "latency_p99_ms": lat.get("p99", float("nan")) / 1000,
        "delivered_total": r["delivered_total"],
        "expected_total": r["expected_total"],
        "lost": r["lost"],
        "duplicated": r["duplicated"],
        "reordered": r["reordered"],
        "disconnects": r["disconnects"],
        "ok": r["ok"],
        "failures": r["failures"],
    }
    rows.append(row)
    # Every message to every subscriber: nothing lost, nothing missing at the end.
    if (not r["ok"] or r["lost"] or r["duplicated"]
            or r["delivered_total"] != r["expected_total"] or r["subscribers"] != subs):
        bad.append(f"{label}: " + "; ".join(r["failures"] or [
            f"delivered {r['delivered_total']} of {r['expected_total']}, lost {r['lost']}, duplicated {r['duplicated']}"]))
json.dump({"subscribers": subs, "qos": qos, "duration_s": duration, "rate": float(rate), "runs": rows},
          open(f"{run_dir}/summary.json", "w"), indent=2)
print()
print(f"{'layout':<26} {'pacing':<12} {'deliveries/s':>13} {'msgs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'lost':>6} {'dup':>5}  check")
for r in rows:
    name = "root + 3 edges (bridged)" if r["layout"] == "fleet" else "one box"
    print(f"{name:<26} {r['pacing']:<12} {r['delivered_per_s']:>13.0f} {r['published_per_s']:>9.1f} "
          f"{r['latency_p50_ms']:>8.1f} {r['latency_p99_ms']:>8.1f} {r['lost']:>6} {r['duplicated']:>5}  "
          f"{'ok' if r['ok'] else 'FAILED'}")
if bad:
    print()
    for b in bad:
        print("fleet: FAILED " + b, file=sys.stderr)
    sys.exit(1)
EOF
ln -sfn "fleet-$run_id" bench-results/fleet-latest
echo "fleet: $run_dir/summary.json"
