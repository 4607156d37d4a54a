#!/usr/bin/env bash
# Compares two shardmq builds side by side, interleaved, so that both meet the machine
# in the same state: for each round and each scenario, runs the scenario against A
# (started fresh), then against B (started fresh), with the same load generator and
# flags. Prints the median of each build's delivered messages/s and broker CPU per
# message over the rounds, and B's ratio to A: the ratio of the medians, and the median
# of the per-round ratios ("paired", which cancels the machine's drift between rounds).
# Use it to show that a change costs nothing (or what it costs) on a noisy machine.
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
# shellcheck source=scripts/lib/runs.sh
. scripts/lib/runs.sh

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
    wait_mqtt "$port" "$side" || true
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
# Medians of each side over the rounds, and the median of the per-round ratios: A and
# B of one round ran seconds apart, so their ratio cancels the machine's drift between
# rounds, which the ratio of the two medians does not.
print(f"{'scenario':16} {'A msg/s':>12} {'B msg/s':>12} {'B/A':>6} {'paired':>7}   "
      f"{'A CPU us/msg':>12} {'B CPU us/msg':>12} {'B/A':>6} {'paired':>7}")
def load(side, label):
    runs = {}
    for f in glob.glob(f"{out}/{side}-{label}-*.json"):
        r = json.load(open(f))
        cpu = (r.get("broker_process") or {}).get("cpu_us_per_msg") or float("nan")
        runs[int(f.rsplit("-", 1)[1].split(".")[0])] = (r["delivered_per_s"], cpu)
    return runs
def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")
for label in labels:
    a, b = load("A", label), load("B", label)
    both = sorted(set(a) & set(b))
    ar, ac = med([v[0] for v in a.values()]), med([v[1] for v in a.values()])
    br, bc = med([v[0] for v in b.values()]), med([v[1] for v in b.values()])
    pr = med([b[i][0] / a[i][0] for i in both if a[i][0]])
    pc = med([b[i][1] / a[i][1] for i in both if a[i][1]])
    print(f"{label:16} {ar:12.0f} {br:12.0f} {br/ar:6.2f} {pr:7.2f}   "
          f"{ac:12.3f} {bc:12.3f} {bc/ac:6.2f} {pc:7.2f}   ({len(both)} rounds)")
EOF
