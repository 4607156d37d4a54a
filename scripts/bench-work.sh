#!/usr/bin/env bash
# Broker work per delivered message, for builds compared side by side: user-space
# instructions and cycles from hardware counters (`perf stat -e
# instructions:u,cycles:u -p PID`) where the machine has them (a virtual machine
# often has none: then "nan"), and user-space CPU time (utime in /proc/PID/stat),
# which other processes disturb less than throughput or total CPU time (no kernel
# network work in it). For each round, scenario and build in turn (interleaved),
# starts the broker fresh, counts over the whole loadtest run (connects, warm-up and
# measured window) and divides by every message delivered in it (the run's
# delivered_total). Prints the median per build and scenario.
#
# Usage: scripts/bench-work.sh [--rounds N] [--duration S] [--only "L1 L2"] BIN...
#   BIN...         shardmq binaries, named in the table by their path
#   --rounds N     rounds (default 3)
#   --duration S   measured seconds per run (default 3; warm-up 1)
#   --only L       scenario labels, as for scripts/bench-ab.sh (default all five)
# Brokers run 2 shards on 127.0.0.1, ports 18951 to 19050. Results:
# bench-results/work-<time>/.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
# shellcheck source=scripts/lib/runs.sh
. scripts/lib/runs.sh

rounds=3 duration=3 only="p2p-16-q0 p2p-16-q1 fanin-32-q0 fanout-100-q0 fanout-1000-q0"
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { sed -n '2,16p' "$0"; exit 2; }
bins=()
for b in "$@"; do bins+=("$(readlink -f "$b")"); done
port_base=18951
cargo build --release -q -p shardmq-loadtest
out=bench-results/work-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
{
    for i in "${!bins[@]}"; do echo "$i: ${bins[$i]}"; done
    echo "rounds $rounds, duration $duration s, $(nproc) CPUs, $(date -u +%FT%TZ)"
} | tee "$out/meta.txt"

runs=0
run_one() { # index bin label round
    local i=$1 bin=$2 label=$3 round=$4 pid perf port
    runs=$((runs + 1))
    port=$((port_base + runs % 100))
    "$bin" --listen "127.0.0.1:$port" --shards 2 >"$out/$i-broker.log" 2>&1 &
    pid=$!
    wait_mqtt "$port" "$i" || true
    perf stat -x, -e instructions:u,cycles:u -p "$pid" -o "$out/$i-$label-$round.perf" &
    perf=$!
    awk '{ print $14, $15 }' "/proc/$pid/stat" >"$out/$i-$label-$round.cpu"
    # shellcheck disable=SC2046 # plain words
    timeout --signal=INT --kill-after=10 $((duration + 120)) \
        target/release/shardmq-loadtest $(scenario_args "$label") --broker "127.0.0.1:$port" \
        --duration "$duration" --warmup 1 --broker-pid "$pid" --broker-name "$i" --quiet \
        --label "$label" --json "$out/$i-$label-$round.json" >"$out/$i-$label-$round.txt" 2>&1 || true
    awk '{ print $14, $15 }' "/proc/$pid/stat" >>"$out/$i-$label-$round.cpu"
    kill -INT "$perf" 2>/dev/null || true
    wait "$perf" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

for round in $(seq 1 "$rounds"); do
    for label in $only; do
        echo "round $round: $label" >&2
        for i in "${!bins[@]}"; do
            run_one "$i" "${bins[$i]}" "$label" "$round"
        done
    done
done

# shellcheck disable=SC2086 # $only: plain words
python3 - "$out" "${#bins[@]}" $only <<'EOF' | tee "$out/table.txt"
import json, glob, statistics, sys
out, n, labels = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def counters(path):
    c = {}
    for line in open(path):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].replace(".", "").isdigit():
            c[f[2].split(":")[0]] = float(f[0])
    return c
import os
tick = os.sysconf("SC_CLK_TCK")
def user_us(path):
    (u0, s0), (u1, s1) = [tuple(map(int, l.split())) for l in open(path)]
    return (u1 - u0) * 1e6 / tick
med = lambda v: statistics.median(v) if v else float("nan")
print(f"{'scenario':16}" + "".join(f" {f'{i} insn/msg':>12} {f'{i} cyc/msg':>11} {f'{i} user ns/msg':>15}" for i in range(n)))
for label in labels:
    row = f"{label:16}"
    for i in range(n):
        ins, cyc, usr = [], [], []
        for j in sorted(glob.glob(f"{out}/{i}-{label}-*.json")):
            d = json.load(open(j))["delivered_total"]
            if not d:
                continue
            c = counters(j[:-5] + ".perf")
            if "instructions" in c:
                ins.append(c["instructions"] / d)
                cyc.append(c.get("cycles", float("nan")) / d)
            usr.append(user_us(j[:-5] + ".cpu") * 1000 / d)
        row += f" {med(ins):12.0f} {med(cyc):11.0f} {med(usr):15.1f}"
    print(row)
EOF
