#!/usr/bin/env bash
# What persistence costs shardmq, on this machine, with the release build:
#   a. p2p QoS 1 (16 pairs, 64 B): shardmq in memory, --fsync always, --fsync interval,
#      Mosquitto in memory, Mosquitto with persistence (and rumqttd in memory when
#      installed), interleaved (A B C ... A B C ...) --rounds times, each run on a
#      freshly started broker and a fresh data directory; medians and the ratio of
#      each durable configuration to the same broker in memory.
#   b. fan-out 1 publisher -> 1000 persistent subscribers (clean session 0) at QoS 1,
#      --fsync always: log bytes written per published message, from the broker's
#      Prometheus counters (shardmq_log_bytes_written_total over
#      shardmq_messages_received_total{qos="1"}), sampled every 0.5 s and taken over
#      the publishing phase only (connects and subscribes left out), for 64 B and
#      1 KiB payloads.
#   c. recovery: one offline persistent subscriber, 1,000,000 QoS 1 messages of 64 B
#      queued for it (--fsync always), kill -9, restart; the time from the process's
#      start to the log line "shardmq started", to the port accepting, and the
#      broker's own "recovered persistent state ... ms=" figure, over --restarts
#      kill -9/restart cycles; then the subscriber drains its queue and the script
#      counts what arrives.
# Data directories are made under ${TMPDIR:-/tmp} (its filesystem is recorded) and
# removed afterwards. Results (every loadtest JSON, samples, broker logs,
# summary.json, summary.txt) go to bench-results/durability-<time>/.
# Usage: scripts/bench-durability.sh [options]   (--help lists them)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

usage() {
    cat <<EOF
Usage: scripts/bench-durability.sh [options]

  --only P[,P]      parts to run: a (p2p QoS 1), b (log bytes per message),
                    c (recovery); default a,b,c
  --rounds N        interleaved rounds of part a (default 3)
  --duration S      measured seconds per loadtest run (default 10)
  --warmup S        seconds of load before measuring (default 2)
  --messages N      messages queued before the crash in part c (default 1000000)
  --restarts N      kill -9/restart cycles in part c (default 3)
  --subscribers N   persistent subscribers in part b (default 1000)
  --port-base P     loopback ports P..P+7 (default 19931): parts b and c on P,
                    the metrics endpoint on P+1, part a's configurations one each
                    on P+2.. (a port a broker has just left can stay taken)
  --no-build        use the binaries already in target/release
  -h, --help        this text
EOF
}

command_line="scripts/bench-durability.sh $*"
parts="a,b,c" rounds=3 duration=10 warmup=2 messages=1000000 restarts=3 subscribers=1000
port_base=19931 build=1
while [ $# -gt 0 ]; do
    case $1 in
        --only) parts=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --messages) messages=$2; shift 2 ;;
        --restarts) restarts=$2; shift 2 ;;
        --subscribers) subscribers=$2; shift 2 ;;
        --port-base) port_base=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench-durability: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
has_part() { [[ ",$parts," == *",$1,"* ]]; }
port=$port_base metrics_port=$((port_base + 1))

run() {
    echo "+ $*"
    "$@"
}

if [ "$build" = 1 ]; then
    run cargo build --release --workspace
fi
shardmq=target/release/shardmq loadtest=target/release/shardmq-loadtest
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
rumqttd_bin=${RUMQTTD_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin/rumqttd
for bin in "$shardmq" "$loadtest"; do
    [ -x "$bin" ] || { echo "bench-durability: $bin is missing" >&2; exit 1; }
done
if has_part a && [ ! -x "$mosquitto_bin" ]; then
    echo "bench-durability: part a needs mosquitto (apt-get install mosquitto)" >&2
    exit 1
fi
if has_part c && ! command -v mosquitto_sub >/dev/null; then
    echo "bench-durability: part c needs mosquitto_sub (apt-get install mosquitto-clients)" >&2
    exit 1
fi

run_id=durability-$(date +%Y%m%d-%H%M%S)
dir=bench-results/$run_id
mkdir -p "$dir"
tmp_base=${TMPDIR:-/tmp}
echo "bench-durability: results in $dir"
{
    echo "command: $command_line"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo -)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
    echo "kernel: $(uname -sr)"
    echo "cpus: $(nproc)"
    echo "data dirs: $tmp_base ($(df -PT "$tmp_base" | awk 'NR == 2 { print $2 " on " $1 }'))"
    echo "parts: $parts rounds: $rounds duration: $duration warmup: $warmup messages: $messages restarts: $restarts subscribers: $subscribers"
    if [ -x "$mosquitto_bin" ]; then echo "mosquitto: $("$mosquitto_bin" -h 2>&1 | head -n 1)"; fi
    if [ -x "$rumqttd_bin" ]; then echo "rumqttd: $("$rumqttd_bin" --version 2>&1)"; fi
} | tee "$dir/meta.txt"

port_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

broker_pid="" data=""

new_data() {
    data=$(mktemp -d "$tmp_base/bench-durability.XXXXXX")
}

remove_data() {
    if [ -n "$data" ]; then
        rm -rf "$data"
        data=""
    fi
}

# Starts "$@" in the background (log in $log) and waits until $port accepts.
start() {
    if port_accepts "$port"; then
        echo "bench-durability: port $port is already taken" >&2
        return 1
    fi
    echo "+ NO_COLOR=1 $* >>$log 2>&1 &"
    NO_COLOR=1 "$@" >>"$log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 300); do
        alive "$broker_pid" || { echo "bench-durability: broker exited at start ($log)" >&2; tail -n 20 "$log" >&2; return 1; }
        port_accepts "$port" && return 0
        sleep 0.05
    done
    echo "bench-durability: broker does not accept on port $port after 15 s" >&2
    return 1
}

# SIGTERM, up to 20 s, then SIGKILL (a broker that needs the SIGKILL is reported).
stop() {
    [ -n "$broker_pid" ] || return 0
    local pid=$broker_pid
    broker_pid=""
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        echo "bench-durability: pid $pid still running 20 s after SIGTERM; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop
    remove_data
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# As in bench-peers.sh: queues as deep as mosquitto's max_queued_messages.
SHARDMQ_FLAGS=(--max-queued-messages 100000 --max-queued-bytes 16777216)

# Starts configuration $1 of part a on $port.
start_config() {
    local conf
    log=$dir/$1.log
    echo "--- start $1 ---" >>"$log"
    case $1 in
        shardmq-mem) start "$shardmq" --listen "127.0.0.1:$port" "${SHARDMQ_FLAGS[@]}" ;;
        shardmq-always | shardmq-interval)
            new_data
            start "$shardmq" --listen "127.0.0.1:$port" "${SHARDMQ_FLAGS[@]}" \
                --data-dir "$data" --fsync "${1#shardmq-}" ;;
        mosquitto-mem | mosquitto-persist)
            conf=$dir/$1.conf
            sed -E "s/^listener [0-9]+ 127\.0\.0\.1\$/listener $port 127.0.0.1/" \
                scripts/peers/mosquitto.conf >"$conf"
            if [ "$1" = mosquitto-persist ]; then
                # Mosquitto's persistence, as documented: the whole in-memory state is
                # written to persistence_location/mosquitto.db every autosave_interval
                # seconds (1, the shortest) and at exit. Nothing is written per
                # message, and a PUBACK promises nothing about the disk.
                new_data
                sed -i -E '/^persistence /d' "$conf"
                {
                    echo "persistence true"
                    echo "persistence_location $data/"
                    echo "autosave_interval 1"
                    echo "autosave_on_changes false"
                    if [ "$(id -u)" -eq 0 ]; then echo "user root"; fi
                } >>"$conf"
            fi
            start "$mosquitto_bin" -c "$conf" ;;
        rumqttd-mem)
            conf=$dir/rumqttd.toml
            sed -E "s/^listen = \"127\.0\.0\.1:[0-9]+\"\$/listen = \"127.0.0.1:$port\"/" \
                scripts/peers/rumqttd.toml >"$conf"
            start "$rumqttd_bin" --quiet --config "$conf" ;;
    esac
}

# Prints "bytes msgs compactions" from shardmq's metrics endpoint.
sample_metrics() {
    curl -sf "http://127.0.0.1:$metrics_port/metrics" | awk '
        /^shardmq_log_bytes_written_total / { b = $2 }
        /^shardmq_messages_received_total\{qos="1"\} / { m = $2 }
        /^shardmq_log_compactions_total / { c = $2 }
        END { printf "%d %d %d\n", b, m, c }'
}

lt_limit=$(awk -v d="$duration" -v w="$warmup" 'BEGIN { printf "%d", d + w + 120 }')
failures=()

# --- a. p2p QoS 1 -------------------------------------------------------------------

if has_part a; then
    configs="shardmq-mem shardmq-always shardmq-interval mosquitto-mem mosquitto-persist"
    if [ -x "$rumqttd_bin" ]; then configs="$configs rumqttd-mem"; fi
    echo "a: $configs" >>"$dir/meta.txt"
    declare -A APORT=()
    i=2
    for c in $configs; do
        APORT[$c]=$((port_base + i))
        i=$((i + 1))
    done
    for r in $(seq "$rounds"); do
        for c in $configs; do
            echo
            echo "=== a: round $r, $c ==="
            port=${APORT[$c]}
            if ! start_config "$c"; then
                failures+=("a $c round $r: did not start")
                stop
                remove_data
                continue
            fi
            rc=0
            run timeout --foreground --signal=INT --kill-after=10 "$lt_limit" \
                "$loadtest" p2p --clients 16 --qos 1 --payload 64 --broker "127.0.0.1:$port" \
                --duration "$duration" --warmup "$warmup" --quiet --broker-pid "$broker_pid" \
                --broker-name "$c" --label p2p-16-q1 --json "$dir/a-$c-r$r.json" || rc=$?
            # Other load on this shared machine skews a run: the load average after
            # each run is kept.
            echo "a $c round $r: loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >>"$dir/noise.txt"
            [ "$rc" = 0 ] || failures+=("a $c round $r: loadtest exit $rc")
            if ! alive "$broker_pid"; then failures+=("a $c round $r: broker died"); fi
            stop
            remove_data
        done
    done
fi

# --- b. log bytes per published message ---------------------------------------------

port=$port_base

if has_part b; then
    for payload in 64 1024; do
        echo
        echo "=== b: fan-out 1 -> $subscribers persistent subscribers, QoS 1, $payload B, --fsync always ==="
        log=$dir/b-$payload.log
        new_data
        if ! start "$shardmq" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port" \
            "${SHARDMQ_FLAGS[@]}" --data-dir "$data" --fsync always; then
            failures+=("b $payload: did not start")
            stop
            remove_data
            continue
        fi
        samples=$dir/b-$payload-samples.txt
        : >"$samples"
        (
            while true; do
                echo "$(date +%s.%N) $(sample_metrics)" >>"$samples"
                sleep 0.5
            done
        ) &
        sampler=$!
        rc=0
        run timeout --foreground --signal=INT --kill-after=10 "$lt_limit" \
            "$loadtest" fanout --clients "$subscribers" --publishers 1 --qos 1 --persistent \
            --payload "$payload" --broker "127.0.0.1:$port" --duration "$duration" \
            --warmup "$warmup" --quiet --broker-pid "$broker_pid" --broker-name shardmq-always \
            --label "fanout-$subscribers-q1-ps-$payload" --json "$dir/b-$payload.json" || rc=$?
        sleep 1
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        [ "$rc" = 0 ] || failures+=("b $payload: loadtest exit $rc")
        if ! alive "$broker_pid"; then failures+=("b $payload: broker died"); fi
        du -sb "$data" | awk '{ print "data dir bytes at end:", $1 }' >>"$samples.du"
        stop
        remove_data
    done
fi

# --- c. recovery of queued messages -------------------------------------------------

# Publishes $3 QoS 1 messages of $5 bytes to topic $4 at $1:$2 as fast as one socket
# takes them (a window of 20000 unacknowledged), and waits for every PUBACK.
publish_qos1() {
    python3 - "$@" <<'EOF'
import socket, struct, sys, time
host, port, n, topic, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode(), int(sys.argv[5])
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
cid = b"bench-durability-pub"
body = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(cid)) + cid
s.sendall(bytes([0x10, len(body)]) + body)
ack = b""
while len(ack) < 4:
    ack += s.recv(4 - len(ack))
if ack[0] != 0x20 or ack[3] != 0:
    sys.exit(f"CONNACK {ack!r}")
def varint(x):
    out = bytearray()
    while True:
        b, x = x % 128, x // 128
        out.append(b | (0x80 if x else 0))
        if not x:
            return bytes(out)
head = b"\x32" + varint(2 + len(topic) + 2 + size) + struct.pack(">H", len(topic)) + topic
payload = (b"bench-durability " * (size // 17 + 1))[:size]
ids = [struct.pack(">H", i % 65535 + 1) for i in range(65535)]
window, batch = 20000, 2000
sent = acked = 0
buf = b""
t0 = time.monotonic()
while acked < n:
    k = min(n - sent, window - (sent - acked), batch)
    if k > 0:
        s.sendall(b"".join(head + ids[(sent + j) % 65535] + payload for j in range(k)))
        sent += k
    if sent - acked >= window or sent == n:
        data = s.recv(1 << 20)
    else:
        try:
            data = s.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = b""
    if sent - acked >= window or sent == n:
        if not data:
            sys.exit(f"connection closed after {acked} PUBACKs")
    buf += data
    whole = len(buf) // 4 * 4
    if buf[0:whole:4].count(0x40) != whole // 4:
        sys.exit(f"unexpected packet among PUBACKs after {acked}")
    acked += whole // 4
    buf = buf[whole:]
dt = time.monotonic() - t0
s.sendall(b"\xe0\x00")
s.close()
print(f"published {n} QoS 1 messages of {size} B in {dt:.2f} s ({n / dt:,.0f}/s), every PUBACK received")
EOF
}

# Tries $1 every 5 ms until it answers MQTT: prints the time (epoch seconds) of the
# first TCP connection accepted and of the first CONNACK (each CONNECT waits up to
# 0.2 s for it). A TCP accept alone proves little: the kernel completes handshakes on
# a listening socket before the broker reads them.
probe_connack() {
    python3 - "$1" <<'EOF'
import socket, sys, time
port = int(sys.argv[1])
connect = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02pr"
tcp = None
deadline = time.time() + 120
while time.time() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
    except OSError:
        time.sleep(0.005)
        continue
    tcp = tcp or time.time()
    try:
        s.sendall(connect)
        r = s.recv(4)
        if r[:1] == b"\x20" and len(r) == 4 and r[3] == 0:
            print(f"{tcp:.6f} {time.time():.6f}")
            s.sendall(b"\xe0\x00")
            sys.exit(0)
    except OSError:
        pass
    finally:
        s.close()
    time.sleep(0.005)
print(f"{tcp or 0:.6f} 0")
EOF
}

# Milliseconds from $1 (epoch seconds) to the timestamp of the first line of $2 that
# matches $3, after line $4.
log_ms() {
    local line ts
    line=$(tail -n +"$(($4 + 1))" "$2" | grep -m1 -- "$3") || { echo -; return; }
    ts=$(date -d "${line%% *}" +%s.%N)
    awk -v a="$1" -v b="$ts" 'BEGIN { printf "%.0f", (b - a) * 1000 }'
}

if has_part c; then
    echo
    echo "=== c: recovery of $messages queued messages ==="
    log=$dir/c.log
    new_data
    c_cmd=("$shardmq" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics_port"
        --max-queued-messages 2000000 --max-queued-bytes 2000000000 --data-dir "$data" --fsync always)
    recovery=$dir/c-recovery.txt
    echo "restart tcp_ms connack_ms started_ms recovered_ms queued data_dir_bytes" >"$recovery"
    if start "${c_cmd[@]}"; then
        run mosquitto_sub -h 127.0.0.1 -p "$port" -V mqttv311 -i rec1 -c -q 1 -t 'rec/#' -E
        publish_qos1 127.0.0.1 "$port" "$messages" rec/x 64 | tee "$dir/c-publish.txt" ||
            failures+=("c: publishing failed")
        sample_metrics | awk '{ print "log bytes written:", $1, "QoS 1 messages received:", $2, "compactions:", $3 }' |
            tee -a "$dir/c-publish.txt"
        for i in $(seq "$restarts"); do
            size=$(du -sb "$data" | cut -f1)
            echo "+ kill -KILL $broker_pid"
            kill -KILL "$broker_pid"
            wait "$broker_pid" 2>/dev/null || true
            broker_pid=""
            lines=$(wc -l <"$log")
            echo "--- restart $i after kill -9 ---" >>"$log"
            lines=$((lines + 1))
            if port_accepts "$port"; then
                echo "bench-durability: port $port accepts after kill -9, before the restart" |
                    tee -a "$dir/c-odd.txt"
            fi
            probe_connack "$port" >"$dir/.probe" &
            probe=$!
            t0=$(date +%s.%N)
            NO_COLOR=1 "${c_cmd[@]}" >>"$log" 2>&1 &
            broker_pid=$!
            wait "$probe" || true
            read -r t_tcp t_connack <"$dir/.probe"
            if ! alive "$broker_pid"; then
                failures+=("c restart $i: the broker exited")
                tail -n 20 "$log" >&2
                break
            fi
            # The log line may follow the port's opening by a moment.
            for _ in $(seq 300); do
                tail -n +"$((lines + 1))" "$log" | grep -q "shardmq started" && break
                sleep 0.1
            done
            tcp_ms=$(awk -v a="$t0" -v b="$t_tcp" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
            connack_ms=$(awk -v a="$t0" -v b="$t_connack" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
            started_ms=$(log_ms "$t0" "$log" "shardmq started" "$lines")
            rec_line=$(tail -n +"$((lines + 1))" "$log" | grep -m1 "recovered persistent state" || true)
            rec_ms=$(sed -nE 's/.* ms=([0-9]+).*/\1/p' <<<"$rec_line")
            queued=$(sed -nE 's/.* queued=([0-9]+).*/\1/p' <<<"$rec_line")
            echo "$i $tcp_ms $connack_ms $started_ms ${rec_ms:--} ${queued:--} $size" | tee -a "$recovery"
            echo "$rec_line" >>"$dir/c-recovered-lines.txt"
        done
        rm -f "$dir/.probe"
        if [ -n "$broker_pid" ] && alive "$broker_pid"; then
            # The subscriber comes back for its queue: every message should arrive.
            t0=$(date +%s.%N)
            got=$(timeout 300 mosquitto_sub -h 127.0.0.1 -p "$port" -V mqttv311 -i rec1 -c -q 1 \
                -t 'rec/#' -C "$messages" -W 240 | wc -l || true)
            t1=$(date +%s.%N)
            echo "drained $got of $messages messages in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s" |
                tee "$dir/c-drain.txt"
            [ "$got" = "$messages" ] || failures+=("c: the subscriber received $got of $messages messages")
        fi
    else
        failures+=("c: did not start")
    fi
    stop
    remove_data
fi

# --- Summary -----------------------------------------------------------------------

python3 - "$dir" "$duration" <<'EOF' | tee "$dir/summary.txt"
import glob, json, os, re, statistics, sys
d = sys.argv[1]
out = {"meta": open(os.path.join(d, "meta.txt")).read().splitlines()}
def med(xs):
    return statistics.median(xs) if xs else None
def fmt(x, unit=""):
    return "-" if x is None else (f"{x/1e6:.2f}M" if x >= 1e6 else f"{x/1e3:.1f}k" if x >= 1e3 else f"{x:.0f}") + unit

# a
runs = {}
for f in sorted(glob.glob(os.path.join(d, "a-*-r*.json"))):
    m = re.match(r"a-(.*)-r(\d+)\.json$", os.path.basename(f))
    j = json.load(open(f))
    runs.setdefault(m.group(1), []).append(j)
if runs:
    a = {}
    print("a. p2p, 16 pairs, QoS 1, 64 B: delivered msgs/s (median of runs; each run's figure)")
    for c, js in runs.items():
        rates = [j["delivered_per_s"] for j in js]
        cpu = [j["broker_process"]["cpu_us_per_msg"] for j in js if (j.get("broker_process") or {}).get("cpu_us_per_msg") is not None]
        p99 = [j["latency_us"]["p99"] for j in js if j.get("latency_us")]
        ok = all(j.get("ok", True) and j.get("lost", 0) == 0 for j in js)
        a[c] = {"delivered_per_s": rates, "median": med(rates), "p99_us_median": med(p99),
                "broker_cpu_us_per_msg_median": med(cpu), "all_ok": ok}
        print(f"  {c:18} {fmt(med(rates)):>8}   p99 {fmt(med(p99))} µs   broker CPU {med(cpu) or 0:.2f} µs/msg   runs: "
              + ", ".join(fmt(x) for x in rates) + ("" if ok else "   (a run failed its checks)"))
    ratios = {}
    for dur, mem in [("shardmq-always", "shardmq-mem"), ("shardmq-interval", "shardmq-mem"),
                     ("mosquitto-persist", "mosquitto-mem")]:
        if dur in a and mem in a and a[mem]["median"]:
            ratios[f"{dur}/{mem}"] = a[dur]["median"] / a[mem]["median"]
    peers = [c for c in a if not c.startswith("shardmq") and c.endswith("-mem")]
    if "shardmq-always" in a and peers:
        best = max(peers, key=lambda c: a[c]["median"])
        ratios[f"shardmq-always/{best}"] = a["shardmq-always"]["median"] / a[best]["median"]
    for k, v in ratios.items():
        print(f"  {k:40} {v*100:6.1f} %")
    out["a"] = {"configs": a, "ratios": ratios}

# b
b = {}
for f in sorted(glob.glob(os.path.join(d, "b-*-samples.txt"))):
    payload = int(re.match(r"b-(\d+)-samples", os.path.basename(f)).group(1))
    rows = [tuple(float(x) for x in l.split()) for l in open(f) if len(l.split()) == 4]
    # The publishing phase: samples where the QoS 1 count grew since the one before.
    inc = [i for i in range(1, len(rows)) if rows[i][2] > rows[i - 1][2]]
    if len(inc) < 4:
        continue
    # From the first sample after publishing started to the one before it stopped:
    # neither end holds connects, subscribes or disconnects.
    i0, i1 = inc[0], inc[-2]
    db, dm, dc = rows[i1][1] - rows[i0][1], rows[i1][2] - rows[i0][2], rows[i1][3] - rows[i0][3]
    js = json.load(open(os.path.join(d, f"b-{payload}.json")))
    per = db / dm if dm else None
    target = 2 * payload + 64
    b[payload] = {"log_bytes": db, "messages": dm, "seconds": rows[i1][0] - rows[i0][0],
                  "compactions": dc, "bytes_per_message": per, "target": target,
                  "published_per_s": js["published_per_s"], "delivered_per_s": js["delivered_per_s"],
                  "ok": js.get("ok", True)}
if b:
    print("b. fan-out 1 -> N persistent subscribers, QoS 1, --fsync always: log bytes per published message")
    for p, r in sorted(b.items()):
        print(f"  {p:5} B payload: {r['bytes_per_message']:.0f} B/msg (target <= {r['target']}) over "
              f"{r['messages']:.0f} msgs in {r['seconds']:.1f} s, {r['compactions']:.0f} compactions; "
              f"{fmt(r['published_per_s'])} published/s, {fmt(r['delivered_per_s'])} delivered/s")
    out["b"] = b

# c
f = os.path.join(d, "c-recovery.txt")
if os.path.exists(f):
    lines = open(f).read().split("\n")[1:]
    rows = [l.split() for l in lines if l.strip()]
    c = {"restarts": [dict(zip(["restart", "tcp_ms", "connack_ms", "started_ms", "recovered_ms", "queued", "data_dir_bytes"], r)) for r in rows]}
    for k in ["c-publish.txt", "c-drain.txt"]:
        p = os.path.join(d, k)
        if os.path.exists(p):
            c[k[2:-4]] = open(p).read().strip()
    print("c. recovery after kill -9 (ms from process start): TCP accept / CONNACK / 'shardmq started' / broker's 'recovered' ms / queued / data dir")
    for r in rows:
        print(f"  restart {r[0]}: {r[1]} / {r[2]} / {r[3]} / {r[4]} / {r[5]} / {int(r[6])/1e6:.0f} MB")
    def num(xs):
        return [float(x) for x in xs if x != "-"]
    c["tcp_ms_median"] = med(num([r[1] for r in rows]))
    c["connack_ms_median"] = med(num([r[2] for r in rows]))
    c["started_ms_median"] = med(num([r[3] for r in rows]))
    print(f"  medians: TCP accept {c['tcp_ms_median']} ms, CONNACK {c['connack_ms_median']} ms, "
          f"'shardmq started' {c['started_ms_median']} ms (target < 10000)")
    for k in ["publish", "drain"]:
        if k in c:
            print("  " + c[k].replace("\n", "\n  "))
    out["c"] = c
json.dump(out, open(os.path.join(d, "summary.json"), "w"), indent=2)
EOF

echo
if [ ${#failures[@]} -gt 0 ]; then
    echo "bench-durability: ${#failures[@]} failure(s):" >&2
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "bench-durability: done; results in $dir"
