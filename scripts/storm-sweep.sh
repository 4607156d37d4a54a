#!/usr/bin/env bash
# A reconnect storm at several depths: the loadtest's `storm` scenario (N clients, each
# CONNECT, SUBSCRIBE to its own topic and one QoS 1 message through it) against each
# broker, with at most C handshakes in progress per load-generator thread, for each C
# given ("all": every client at once, the storm rows of bench-peers.sh). Fresh clean
# sessions, and with --resume persistent sessions reconnecting (a first storm, 16 at a
# time and unmeasured, makes them). Each run gets a freshly started broker.
#
# Prints clients per second, CPU per client of the broker and of the load generator
# (the two share this machine's CPUs), and the kernel's accept-queue overflows during
# the run (TcpExtListenOverflows: SYNs or handshakes dropped because the broker's
# listen backlog was full; each costs the client a SYN retransmission, 1 s and then
# doubling). Then shardmq's rate over each peer's at each depth.
#
# Usage: scripts/storm-sweep.sh [--clients N] [--depths "16 64 512 all"]
#                               [--brokers "shardmq mosquitto rumqttd"] [--resume]
#                               [--rounds R]
# shardmq runs 2 shards with --log-level warn, Mosquitto and rumqttd with
# scripts/peers/ (as bench-peers.sh runs them); ports 18881 to 18883.
# Results: bench-results/storm-sweep-<time>/ (one loadtest JSON per run, summary.txt).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
# shellcheck source=scripts/lib/runs.sh
. scripts/lib/runs.sh

clients=19000 depths="16 64 512 all" brokers="shardmq mosquitto" resume=0 rounds=1
while [ $# -gt 0 ]; do
    case $1 in
        --clients) clients=$2; shift 2 ;;
        --depths) depths=$2; shift 2 ;;
        --brokers) brokers=$2; shift 2 ;;
        --resume) resume=1; shift ;;
        --rounds) rounds=$2; shift 2 ;;
        *) sed -n '2,21p' "$0"; exit 2 ;;
    esac
done
for tool in mosquitto_pub nstat; do
    command -v "$tool" >/dev/null || { echo "storm-sweep: needs $tool" >&2; exit 2; }
done
cargo build --release -q -p shardmq -p shardmq-loadtest
out=bench-results/storm-sweep-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
echo "$clients clients, depths: $depths, resume $resume, $(nproc) CPUs, $(git rev-parse --short HEAD), $(date -u +%FT%TZ)" |
    tee "$out/meta.txt"

overflows() { nstat -az TcpExtListenOverflows | awk '/ListenOverflows/ { print $2 }'; }

start_broker() { # name -> sets pid, port
    case $1 in
        shardmq)
            port=18881
            target/release/shardmq --shards 2 --log-level warn --listen "127.0.0.1:$port" \
                >"$out/broker.log" 2>&1 &
            ;;
        mosquitto)
            port=18882
            sed -E "s/^listener [0-9]+ 127\.0\.0\.1\$/listener $port 127.0.0.1/" \
                scripts/peers/mosquitto.conf >"$out/mosquitto.conf"
            mosquitto -c "$out/mosquitto.conf" >"$out/broker.log" 2>&1 &
            ;;
        rumqttd)
            port=18883
            sed -E "s/^listen = \"127\.0\.0\.1:18833\"/listen = \"127.0.0.1:$port\"/" \
                scripts/peers/rumqttd.toml >"$out/rumqttd.toml"
            rumqttd -c "$out/rumqttd.toml" >"$out/broker.log" 2>&1 &
            ;;
        *) echo "storm-sweep: unknown broker $1" >&2; exit 2 ;;
    esac
    pid=$!
    wait_mqtt "$port" "$1"
}

for round in $(seq 1 "$rounds"); do
    for depth in $depths; do
        for b in $brokers; do
            start_broker "$b" || { kill "$pid" 2>/dev/null || true; continue; }
            conc=$depth
            [ "$depth" = all ] && conc=$clients
            extra=()
            if [ "$resume" = 1 ]; then
                extra=(--persistent --client-id-prefix "sweep$round$depth-")
                timeout 300 target/release/shardmq-loadtest storm --broker "127.0.0.1:$port" \
                    --clients "$clients" --connect-concurrency 16 --duration 0.2 --warmup 0 \
                    --connect-timeout 150 --quiet "${extra[@]}" >"$out/$b-$depth-$round-sessions.txt" 2>&1 ||
                    echo "storm-sweep: $b: making the sessions failed" >&2
            fi
            o0=$(overflows)
            timeout 300 target/release/shardmq-loadtest storm --broker "127.0.0.1:$port" \
                --clients "$clients" --connect-concurrency "$conc" --duration 0.5 --warmup 0 \
                --connect-timeout 150 --broker-pid "$pid" --broker-name "$b" --quiet \
                --json "$out/$b-$depth-$round.json" "${extra[@]}" >"$out/$b-$depth-$round.txt" 2>&1 || true
            o1=$(overflows)
            echo "$((o1 - o0))" >"$out/$b-$depth-$round.overflows"
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            echo "round $round, depth $depth, $b: $(grep -E '^connected' "$out/$b-$depth-$round.txt" | sed 's/  */ /g'), overflows $((o1 - o0))" >&2
        done
    done
done

python3 - "$out" "$depths" "$brokers" <<'EOF' | tee "$out/summary.txt"
import glob, json, os, statistics, sys
out, depths, brokers = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def runs(b, d):
    rows = []
    for f in sorted(glob.glob(f"{out}/{b}-{d}-*.json")):
        r = json.load(open(f))
        c = r.get("conns") or {}
        ov = open(f[:-5] + ".overflows").read().strip()
        rows.append((c.get("connect_per_s") or 0.0, c.get("broker_cpu_us_per_connect"),
                     c.get("loadtest_cpu_us_per_connect"), int(ov), c.get("failed", 0)))
    return rows
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
fmt = lambda x, f: "-" if x is None else format(x, f)
print(f"{'depth':>6} {'broker':10} {'clients/s':>10} {'broker us':>10} {'loadtest us':>12} {'overflows':>10} {'failed':>7}")
rates = {}
for d in depths:
    for b in brokers:
        rs = runs(b, d)
        if not rs:
            print(f"{d:>6} {b:10} {'no run':>10}")
            continue
        rate = med([r[0] for r in rs])
        rates[(d, b)] = rate
        print(f"{d:>6} {b:10} {rate:10.0f} {fmt(med([r[1] for r in rs]), '10.0f')} "
              f"{fmt(med([r[2] for r in rs]), '12.0f')} {fmt(med([r[3] for r in rs]), '10.0f')} "
              f"{fmt(med([r[4] for r in rs]), '7.0f')}")
peers = [b for b in brokers if b != "shardmq"]
if "shardmq" in brokers and peers:
    print()
    print(f"{'depth':>6} " + " ".join(f"{'shardmq/' + p:>18}" for p in peers))
    for d in depths:
        cells = []
        for p in peers:
            a, q = rates.get((d, "shardmq")), rates.get((d, p))
            cells.append(f"{a / q:17.2f}x" if a and q else f"{'-':>18}")
        print(f"{d:>6} " + " ".join(cells))
EOF
