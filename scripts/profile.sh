#!/usr/bin/env bash
# Where the broker's CPU goes under one load-generator scenario.
#
#   scripts/profile.sh [--shards N] [--seconds S] [--port P] [--out DIR] -- <loadtest scenario args>
#   e.g. scripts/profile.sh -- fanout --clients 1000 --publishers 1 --qos 0
#
# Builds the release binaries (release builds keep line tables), starts a fresh
# broker, runs the scenario with shardmq-loadtest and samples the broker's threads
# with `perf record` (cpu-clock, call graphs) for S seconds after a 2 s warm-up. Prints
# the loadtest summary, the share of samples per shared object (user code, libc,
# kernel), the top symbols and the top callers of the top symbol. perf comes from
# Debian's linux-perf, installed here if missing. Writes DIR/perf.data (default
# bench-results/profile-<time>) for further `perf report -i` use.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

shards=2 seconds=5 port=18899 out=""
while [ $# -gt 0 ]; do
    case $1 in
        --shards) shards=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "profile: unknown option $1" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "profile: give the loadtest scenario after --" >&2; exit 2; }

if ! command -v perf >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends linux-perf
fi
cargo build --release --workspace
out=${out:-bench-results/profile-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

target/release/shardmq --listen "127.0.0.1:$port" --shards "$shards" >"$out/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

target/release/shardmq-loadtest "$@" --broker "127.0.0.1:$port" --broker-pid "$broker" \
    --warmup 2 --duration $((seconds + 2)) >"$out/loadtest.txt" 2>&1 &
load=$!
sleep 2
perf record -p "$broker" -F 499 -e cpu-clock -g -o "$out/perf.data" -- sleep "$seconds" \
    >"$out/perf-record.log" 2>&1
wait $load || echo "profile: the loadtest run failed (see $out/loadtest.txt)" >&2
grep -E '^(scenario|delivered|latency|broker cpu|loadtest|result)' "$out/loadtest.txt" || true

report() { perf report -i "$out/perf.data" --stdio --no-children "$@" 2>/dev/null | grep -v '^#' | grep -v '^$'; }
echo
echo "== samples per object"
report --sort dso -g none | head -n 6
echo
echo "== top symbols"
report --sort sym -g none | head -n 25
echo
echo "== callers of the top symbols"
report --sort sym -g caller,0.5,callee,function,percent --percent-limit 8 | head -n 60
echo
echo "profile: $out/perf.data"
