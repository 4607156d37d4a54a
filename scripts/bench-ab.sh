#!/usr/bin/env bash
# Compares two shardmq builds side by side, interleaved, so that both meet the machine
# in the same state: for each round and each scenario, runs the scenario against A
# (started fresh), then against B (started fresh), with the same load generator and
# flags. Prints the median of each build's delivered messages/s and broker CPU per
# message over the rounds, and B's ratio to A. Use it to show that a change costs
# nothing (or what it costs) on a noisy machine.
#
# Usage: scripts/bench-ab.sh [--rounds N] [--duration S] [--only "L1 L2"] A_BIN B_BIN
#   A_BIN, B_BIN   two shardmq binaries (e.g. a release build of an older commit made
#                  in a git worktree, and target/release/shardmq)
#   --rounds N     rounds (default 5)
#   --duration S   measured seconds per run (default 3; warm-up 1)
#   --only L       scenario labels, from: p2p-16-q0 p2p-16-q1 fanin-32-q0
#                  fanout-100-q0 fanout-1000-q0 (default all five)
# Brokers run 2 shards on 127.0.0.1, ports 18851 to 18950. Results: bench-results/ab-<time>/.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

rounds=5 duration=3 only="p2p-16-q0 p2p-16-q1 fanin-32-q0 fanout-100-q0 fanout-1000-q0"
while [ $# -gt 2 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ $# -eq 2 ] || { sed -n '2,17p' "$0"; exit 2; }
a_bin=$(readlink -f "$1") b_bin=$(readlink -f "$2")
port_base=18851
cargo build --release -q -p shardmq-loadtest
out=bench-results/ab-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
{
    echo "A: $a_bin"
    echo "B: $b_bin"
    echo "rounds $rounds, duration $duration s, $(nproc) CPUs, $(date -u +%FT%TZ)"
} | tee "$out/meta.txt"

scenario_args() {
    case $1 in
        p2p-16-q0) echo "p2p --clients 16 --qos 0" ;;
        p2p-16-q1) echo "p2p --clients 16 --qos 1" ;;
        fanin-32-q0) echo "fanin --clients 32 --qos 0" ;;
        fanout-100-q0) echo "fanout --clients 100 --publishers 1 --qos 0" ;;
        fanout-1000-q0) echo "fanout --clients 1000 --publishers 1 --qos 0" ;;
        *) echo "unknown scenario $1" >&2; exit 2 ;;
    esac
}

runs=0
run_one() { # side bin label round
    local side=$1 bin=$2 label=$3 round=$4 pid port
    # A fresh port each run: a build whose stopped listener lingers in the port's
    # SO_REUSEPORT group (shardmq before 5aa9506) would otherwise reset some of the
    # next broker's first connections.
    runs=$((runs + 1))
    port=$((port_base + runs % 100))
    "$bin" --listen "127.0.0.1:$port" --shards 2 >"$out/$side-broker.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.05
    done
    # An MQTT round trip, not only a TCP accept, as bench-peers.sh makes: a load
    # generator started within milliseconds of the first accept sometimes sees its
    # connections reset (seen with every build here; see docs/BENCHMARKS.md).
    timeout 10 mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -i bench-ab-probe -t bench-ab/probe -m probe ||
        echo "bench-ab: $side does not answer MQTT on $port" >&2
    # shellcheck disable=SC2046 # plain words
    timeout --signal=INT --kill-after=10 $((duration + 120)) \
        target/release/shardmq-loadtest $(scenario_args "$label") --broker "127.0.0.1:$port" \
        --duration "$duration" --warmup 1 --broker-pid "$pid" --broker-name "$side" \
        --label "$label" --json "$out/$side-$label-$round.json" >"$out/$side-$label-$round.txt" 2>&1 || true
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

for round in $(seq 1 "$rounds"); do
    for label in $only; do
        echo "round $round: $label" >&2
        run_one A "$a_bin" "$label" "$round"
        run_one B "$b_bin" "$label" "$round"
    done
done

python3 - "$out" $only <<'EOF'
import json, glob, statistics, sys
out, labels = sys.argv[1], sys.argv[2:]
print(f"{'scenario':16} {'A msg/s':>12} {'B msg/s':>12} {'B/A':>6}   {'A CPU us/msg':>12} {'B CPU us/msg':>12} {'B/A':>6}")
for label in labels:
    row = {}
    for side in "AB":
        runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{side}-{label}-*.json"))]
        rate = [r["delivered_per_s"] for r in runs]
        cpu = [r["broker_process"]["cpu_us_per_msg"] for r in runs
               if r.get("broker_process") and r["broker_process"].get("cpu_us_per_msg")]
        row[side] = (statistics.median(rate) if rate else float("nan"),
                     statistics.median(cpu) if cpu else float("nan"), len(runs))
    (ar, ac, n), (br, bc, _) = row["A"], row["B"]
    print(f"{label:16} {ar:12.0f} {br:12.0f} {br/ar:6.2f}   {ac:12.3f} {bc:12.3f} {bc/ac:6.2f}   ({n} rounds)")
EOF
