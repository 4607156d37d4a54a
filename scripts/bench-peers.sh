#!/usr/bin/env bash
# Compares shardmq with mosquitto and rumqttd on this machine, and shardmq with itself on
# one shard (shardmq-1, for the scaling figures). Installs what is missing,
# builds the workspace, then for each broker in turn: starts it on its own loopback
# port, runs the loadtest scenario set against that one process (so its memory at the
# end of the set counts), and stops it. Writes one JSON file per run, a comparison
# table (plain and Markdown), an SVG chart, a JSON summary and noise.txt (CPU lost to
# other processes and to the hypervisor during each run) under
# bench-results/<run-id>/, and points bench-results/latest there.
# The *-tls scenarios run last, against each broker restarted with only a TLS
# listener (a CA and a server certificate made with openssl in the run's directory,
# the same for every broker) and a password file, every client giving a username and
# password; rumqttd is not run on them.
# shardmq-durable and mosquitto-persist are the persistence rows: shardmq with a fresh
# --data-dir and --fsync always, and mosquitto with persistence on. They run only the
# QoS 1 scenarios (p2p-16-q1 and fanout-1000-q1-ps, the latter with 1000 persistent
# subscribers, which shardmq and mosquitto also run in memory).
# shared-8-q1 is the shared-subscription row: 2 publishers to one $share group of 8
# members at QoS 1, each message to exactly one member.
# The *-v5 rows run their 3.1.1 namesakes with every client speaking MQTT 5.0
# (loadtest --protocol 5): on rumqttd through its separate 5.0 listener, whose support
# is partial (a row it cannot run is reported, not counted as a failure), and on a
# shardmq that refuses 5.0 as "refused (5.0 not accepted)", not as a failure.
# Usage: scripts/bench-peers.sh [options]   (--help lists them)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

RUMQTTD_VERSION=0.20.0
RUMQTTD_ROOT=${RUMQTTD_ROOT:-${CARGO_HOME:-$HOME/.cargo}}
# shardmq-1 is shardmq with --shards 1: a variant of shardmq, not a peer. It runs right
# after shardmq, so that the two meet the machine in the same state, and the report
# divides shardmq's figures by its own in a scaling table.
ALL_BROKERS="shardmq shardmq-1 mosquitto rumqttd shardmq-durable mosquitto-persist"
# Persistence variants: each runs only the scenarios of DURABLE_RUNS, on a data
# directory made fresh at each start (under ${TMPDIR:-/tmp}) and removed at each stop.
# shardmq-durable: shardmq with --data-dir and --fsync always, so a PUBACK waits for
# the fdatasync of the group commit that holds the message.
# mosquitto-persist: mosquitto with persistence true, persistence_location and
# autosave_interval 1. Mosquitto promises less than that: it writes a snapshot of its
# whole in-memory state every autosave_interval seconds (and at a clean exit), not each
# message before its PUBACK, so a crash loses up to a second of acknowledged messages.
DURABLE_BROKERS="shardmq-durable mosquitto-persist"
# conns-50k runs first, on a broker that has not yet held a load: an allocator keeps
# what it has freed, so the RSS-per-connection figure is only meaningful there.
PLAIN_LABELS="conns-50k p2p-16-q0 p2p-16-q1 fanin-32-q0 fanout-100-q0 fanout-1000-q0 latency-50k"
# conns-5k-tls leads the TLS set for the same reason: it runs on a freshly started
# (TLS) broker.
# Fan-out at QoS 1 to subscribers with persistent sessions (clean session 0), after
# the plain set: the 1000 sessions stay in the broker once the run ends.
PERSIST_LABELS="fanout-1000-q1-ps"
# The shared-subscription row: publishers to one $share group of N consumers.
SHARED_LABELS="shared-8-q1"
# MQTT 5.0 rows: the same scenarios as their 3.1.1 namesakes, every client at level 5.
V5_LABELS="p2p-16-q1-v5 fanout-100-q0-v5"
# Reconnect storms (as many clients as conns-50k, all at once, each a SUBSCRIBE to its
# own topic and one QoS 1 message through it): fresh clean sessions, and persistent
# sessions resuming (storm-resume: a first, unmeasured storm makes the sessions, 16
# handshakes per load-generator thread at a time, and the measured one reconnects them
# with clean session 0). "At once": every client's connect() is issued without waiting
# for the others (loadtest storm's default); scripts/storm-sweep.sh measures the same
# storm with fewer handshakes at a time.
STORM_LABELS="storm storm-resume"
TLS_LABELS="conns-5k-tls p2p-16-q0-tls p2p-16-q1-tls"
ALL_LABELS="$PLAIN_LABELS $STORM_LABELS $PERSIST_LABELS $SHARED_LABELS $V5_LABELS $TLS_LABELS"
# The scenarios the persistence variants run (when selected).
DURABLE_RUNS="p2p-16-q1 fanout-1000-q1-ps"
# Brokers that skip the persistent-subscriber scenario: shardmq-1 (a scaling variant)
# and rumqttd (this suite compares persistence with mosquitto only).
NO_PERSIST_BROKERS="shardmq-1 rumqttd"
# Brokers of this suite without a TLS listener: the *-tls scenarios skip them.
NO_TLS_BROKERS="rumqttd"
# Brokers whose 5.0 support is partial: a *-v5 row that fails on them is reported as
# not runnable there, not as a failure of the suite.
V5_PARTIAL_BROKERS="rumqttd"
# The one user of the TLS scenarios, in one password file for every broker.
TLS_USER=bench
TLS_PASSWORD=bench-password
# Connections of conns-5k-tls, in quick and full runs alike.
TLS_CONNS=5000
# Descriptors the load generator keeps for itself besides its connections.
FD_MARGIN=1000

usage() {
    cat <<EOF
Usage: scripts/bench-peers.sh [options]

  --duration S      measured seconds per scenario (default 10)
  --warmup S        seconds of load before measuring (default 2)
  --payload BYTES   payload size (default 64)
  --brokers "A B"   brokers to run, in order (default "$ALL_BROKERS")
  --only L[,L]      scenario labels to run (default all: $ALL_LABELS);
                    "plain", "storm", "persist", "shared", "v5" and "tls" stand for
                    each group;
                    $DURABLE_BROKERS run only $DURABLE_RUNS
  --quick           duration 3, warmup 1, conns-50k capped at 5000 connections
  --shards N        shardmq shards (default 0: one per CPU); shardmq-1 always
                    runs the same binary and flags with --shards 1
  --port-base P     loopback ports: shardmq P, mosquitto P+1, rumqttd P+2,
                    shardmq-1 P+3, shardmq-durable P+4, mosquitto-persist P+5,
                    rumqttd's 5.0 listener P+6 (default 18831)
  --no-build        use the binaries already in target/release
  --dry-run         install, build, start and stop each broker, but print the
                    loadtest commands instead of running them
  -h, --help        this text

rumqttd $RUMQTTD_VERSION is installed with cargo into \$RUMQTTD_ROOT/bin (now $RUMQTTD_ROOT/bin).
EOF
}

command_line="scripts/bench-peers.sh $*"
opt_duration="" opt_warmup="" payload=64 brokers=$ALL_BROKERS only="" quick=0 shards=0
build=1 dry_run=0 port_base=18831
while [ $# -gt 0 ]; do
    case $1 in
        --duration) opt_duration=$2; shift 2 ;;
        --warmup) opt_warmup=$2; shift 2 ;;
        --payload) payload=$2; shift 2 ;;
        --brokers) brokers=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --shards) shards=$2; shift 2 ;;
        --port-base) port_base=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench-peers: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ "$quick" = 1 ]; then
    duration=${opt_duration:-3} warmup=${opt_warmup:-1} conns_wanted=5000
else
    duration=${opt_duration:-10} warmup=${opt_warmup:-2} conns_wanted=50000
fi
# scripts/peers/ holds the configs with the default ports; each run gets a copy with
# the ports of this run.
declare -A PORT=([shardmq]=$port_base [mosquitto]=$((port_base + 1)) [rumqttd]=$((port_base + 2))
    [shardmq-1]=$((port_base + 3)) [shardmq-durable]=$((port_base + 4))
    [mosquitto-persist]=$((port_base + 5)))
# rumqttd serves 5.0 on a listener of its own.
RUMQTTD_V5_PORT=$((port_base + 6))
for b in $brokers; do
    [ -n "${PORT[$b]:-}" ] || { echo "bench-peers: unknown broker $b (known: $ALL_BROKERS)" >&2; exit 2; }
done
labels=$ALL_LABELS
if [ -n "$only" ]; then
    expanded=""
    for l in ${only//,/ }; do
        case $l in
            plain) expanded="$expanded,${PLAIN_LABELS// /,}" ;;
            persist) expanded="$expanded,${PERSIST_LABELS// /,}" ;;
            shared) expanded="$expanded,${SHARED_LABELS// /,}" ;;
            v5) expanded="$expanded,${V5_LABELS// /,}" ;;
            storm) expanded="$expanded,${STORM_LABELS// /,}" ;;
            tls) expanded="$expanded,${TLS_LABELS// /,}" ;;
            *) expanded="$expanded,$l" ;;
        esac
    done
    only=${expanded#,}
    for l in ${only//,/ }; do
        [[ " $ALL_LABELS " == *" $l "* ]] || { echo "bench-peers: unknown label $l (known: $ALL_LABELS)" >&2; exit 2; }
    done
    # In suite order, whatever the order given.
    labels=""
    for l in $ALL_LABELS; do
        if [[ ",$only," == *",$l,"* ]]; then labels="$labels $l"; fi
    done
fi
has_broker() { [[ " $brokers " == *" $1 "* ]]; }
is_tls_label() { [[ " $TLS_LABELS " == *" $1 "* ]]; }
is_v5_label() { [[ " $V5_LABELS " == *" $1 "* ]]; }
v5_partial() { [[ " $V5_PARTIAL_BROKERS " == *" $1 "* ]]; }
has_tls() { [[ "$labels " == *"-tls "* ]]; }
no_tls() { [[ " $NO_TLS_BROKERS " == *" $1 "* ]]; }
is_durable() { [[ " $DURABLE_BROKERS " == *" $1 "* ]]; }
# Whether broker $1 runs scenario $2 (if not, prints why).
runs_label() {
    if is_durable "$1"; then
        [[ " $DURABLE_RUNS " == *" $2 "* ]] || { echo "it runs only $DURABLE_RUNS"; return 1; }
    elif is_tls_label "$2" && no_tls "$1"; then
        echo "it has no TLS listener in this suite"; return 1
    elif [[ " $PERSIST_LABELS " == *" $2 "* && " $NO_PERSIST_BROKERS " == *" $1 "* ]]; then
        echo "it is not in the persistence comparison"; return 1
    fi
}

# Prints a command, then runs it.
run() {
    echo "+ $*"
    "$@"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then run "$@"; else run sudo "$@"; fi
}

# --- 1. Install -------------------------------------------------------------------

# Debian keeps mosquitto in /usr/sbin, which is not on a normal user's PATH.
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# The packaged service, when something started it: Debian starts it on install.
stop_system_mosquitto() {
    local pidfile=/run/mosquitto/mosquitto.pid pid
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
        as_root systemctl stop mosquitto || true
    elif [ -x /etc/init.d/mosquitto ] && [ -s "$pidfile" ]; then
        as_root /etc/init.d/mosquitto stop || true
    fi
    # Started some other way, or the service manager would not stop it.
    if [ -s "$pidfile" ] && pid=$(cat "$pidfile") && kill -0 "$pid" 2>/dev/null; then
        as_root kill "$pid" || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
}

if { has_broker mosquitto || has_broker mosquitto-persist; } && [ ! -x "$mosquitto_bin" ]; then
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    as_root apt-get install -y --no-install-recommends mosquitto
    mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    # This script runs its own mosquitto on its own port and wants no second one
    # competing for the CPU.
    stop_system_mosquitto
fi

rumqttd_bin=$RUMQTTD_ROOT/bin/rumqttd
if has_broker rumqttd && ! { [ -x "$rumqttd_bin" ] && [ "$("$rumqttd_bin" --version 2>/dev/null)" = "rumqttd $RUMQTTD_VERSION" ]; }; then
    # Not --locked: the Cargo.lock that rumqttd 0.20.0 ships pins metrics 0.22.1, which
    # current compilers reject (E0521); the newest compatible versions build.
    run cargo install rumqttd --version "=$RUMQTTD_VERSION" --root "$RUMQTTD_ROOT"
fi

# --- 2. Build ---------------------------------------------------------------------

if [ "$build" = 1 ]; then
    run cargo build --release --workspace
fi
for bin in target/release/shardmq target/release/shardmq-loadtest; do
    if [ ! -x "$bin" ]; then
        if [ "$bin" = target/release/shardmq-loadtest ] && [ "$dry_run" = 1 ]; then
            echo "bench-peers: $bin is missing; fine for --dry-run"
        elif [ "$bin" = target/release/shardmq ] && ! has_broker shardmq && ! has_broker shardmq-1 &&
            ! has_broker shardmq-durable; then
            :
        else
            echo "bench-peers: $bin is missing" >&2
            exit 1
        fi
    fi
done

# --- 3. Descriptors ---------------------------------------------------------------

hard=$(ulimit -Hn)
if [ "$hard" = unlimited ]; then
    run ulimit -n 1048576 2>/dev/null || true
else
    run ulimit -n "$hard"
fi
nofile=$(ulimit -n)
conns=$conns_wanted
if [ "$nofile" != unlimited ] && [ $((nofile - FD_MARGIN)) -lt "$conns" ]; then
    conns=$((nofile - FD_MARGIN))
    if [[ " $labels " == *" conns-50k "* ]]; then
        echo "bench-peers: conns-50k opens $conns connections, not $conns_wanted: the open-files" \
            "limit is $nofile (hard limit $hard) and the load generator keeps $FD_MARGIN for itself"
    fi
fi
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
tls_conns=$TLS_CONNS
if [ "$nofile" != unlimited ] && [ $((nofile - FD_MARGIN)) -lt "$tls_conns" ]; then
    tls_conns=$((nofile - FD_MARGIN))
    if [[ " $labels " == *" conns-5k-tls "* ]]; then
        echo "bench-peers: conns-5k-tls opens $tls_conns connections, not $TLS_CONNS: the" \
            "open-files limit is $nofile"
    fi
fi
if [[ " $labels " == *" conns-50k "* ]] && [ "$conns" -gt $((port_hi - port_lo + 1)) ]; then
    echo "bench-peers: warning: $conns connections from one source address exceed the" \
        "$((port_hi - port_lo + 1)) ephemeral ports ($port_lo-$port_hi)"
fi

# --- 4. Brokers and scenarios ------------------------------------------------------

run_id=$(date +%Y%m%d-%H%M%S)
if [ "$dry_run" = 1 ]; then run_id=$run_id-dry-run; fi
run_dir=bench-results/$run_id
mkdir -p "$run_dir"
echo "bench-peers: results in $run_dir"
{
    echo "command: $command_line"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo -)$(git diff --quiet 2>/dev/null || echo ' (modified)')"
    echo "kernel: $(uname -sr)"
    echo "cpus: $(nproc)"
    echo "open files: $nofile"
    echo "duration: $duration warmup: $warmup payload: $payload conns: $conns shards: $shards"
    if has_tls; then echo "tls: conns $tls_conns; $(openssl version)"; fi
    if has_broker shardmq-1; then echo "shardmq-1: shardmq with --shards 1"; fi
    if has_broker shardmq-durable; then echo "shardmq-durable: shardmq with --data-dir (fresh) --fsync always"; fi
    if has_broker mosquitto || has_broker mosquitto-persist; then echo "mosquitto: $("$mosquitto_bin" -h 2>&1 | head -n 1)"; fi
    if has_broker mosquitto-persist; then echo "mosquitto-persist: persistence true, autosave_interval 1"; fi
    for b in $DURABLE_BROKERS; do
        if has_broker "$b"; then
            echo "data dirs: ${TMPDIR:-/tmp} ($(df -PT "${TMPDIR:-/tmp}" | awk 'NR == 2 { print $2 " on " $1 }'))"
            break
        fi
    done
    if has_broker rumqttd; then echo "rumqttd: $("$rumqttd_bin" --version 2>&1)"; fi
} >"$run_dir/meta.txt"

# The loadtest arguments of a scenario label.
scenario_args() {
    case $1 in
        p2p-16-q0) echo "p2p --clients 16 --qos 0" ;;
        p2p-16-q1) echo "p2p --clients 16 --qos 1" ;;
        p2p-16-q1-v5) echo "p2p --clients 16 --qos 1 --protocol 5" ;;
        fanout-100-q0-v5) echo "fanout --clients 100 --publishers 1 --qos 0 --protocol 5" ;;
        shared-8-q1) echo "shared --clients 8 --publishers 2 --qos 1" ;;
        fanout-1000-q1-ps) echo "fanout --clients 1000 --publishers 1 --qos 1 --persistent" ;;
        fanin-32-q0) echo "fanin --clients 32 --qos 0" ;;
        fanout-100-q0) echo "fanout --clients 100 --publishers 1 --qos 0" ;;
        fanout-1000-q0) echo "fanout --clients 1000 --publishers 1 --qos 0" ;;
        latency-50k) echo "latency --clients 16 --rate 50000 --qos 0" ;;
        # Each connection subscribed to its own topic, as a device to its commands.
        conns-50k) echo "conns --clients $conns --subscribe" ;;
        # A broker whose accept queue overflows takes the kernel's SYN retransmission
        # back-off (1, 3, 7, 15, 31 s): room for it past the default 60 s.
        storm) echo "storm --clients $conns --connect-timeout 150" ;;
        storm-resume) echo "storm --clients $conns --connect-timeout 150 --persistent --client-id-prefix storm-resume-" ;;
        p2p-16-q0-tls) echo "p2p --clients 16 --qos 0" ;;
        p2p-16-q1-tls) echo "p2p --clients 16 --qos 1" ;;
        conns-5k-tls) echo "conns --clients $tls_conns" ;;
    esac
}

# The TLS scenarios' files, made once per run: a CA, a server certificate it signs
# (ECDSA P-256, for localhost and 127.0.0.1) and a password file, used by every broker.
tls_dir=$run_dir/tls
make_tls_files() {
    mkdir -p "$tls_dir"
    run openssl ecparam -name prime256v1 -genkey -noout -out "$tls_dir/ca.key"
    run openssl req -new -x509 -key "$tls_dir/ca.key" -sha256 -days 30 \
        -subj "/CN=bench-peers CA" -out "$tls_dir/ca.pem"
    run openssl ecparam -name prime256v1 -genkey -noout -out "$tls_dir/server.key"
    run openssl req -new -key "$tls_dir/server.key" -subj "/CN=localhost" -out "$tls_dir/server.csr"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
        >"$tls_dir/server.ext"
    run openssl x509 -req -in "$tls_dir/server.csr" -CA "$tls_dir/ca.pem" -CAkey "$tls_dir/ca.key" \
        -CAcreateserial -sha256 -days 30 -extfile "$tls_dir/server.ext" -out "$tls_dir/server.pem"
    # Mosquitto's format ($7$, PBKDF2-SHA512), which both brokers read.
    if command -v mosquitto_passwd >/dev/null 2>&1; then
        run mosquitto_passwd -c -b "$tls_dir/passwd" "$TLS_USER" "$TLS_PASSWORD"
    else
        run target/release/shardmq passwd -c -b "$tls_dir/passwd" "$TLS_USER" "$TLS_PASSWORD"
    fi
}
if has_tls; then make_tls_files; fi

port_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

broker_pid="" broker_mode="" broker_data=""

# Running, not merely unreaped: kill -0 succeeds on a broker that crashed and is a
# zombie until this script waits for it.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# Starts broker $1 in the background and sets broker_pid once its port accepts an MQTT
# connection. Returns non-zero (with the broker stopped) if it does not. With $2 =
# tls, the port is a TLS listener with the run's certificate, and only the user of
# the run's password file may connect.
start_broker() {
    local name=$1 mode=${2:-plain} port=${PORT[$1]} log=$run_dir/$1.log
    local -a cmd probe_tls=()
    if port_accepts "$port" && [ -s /run/mosquitto/mosquitto.pid ] &&
        ss -ltnp "sport = :$port" 2>/dev/null | grep -q "pid=$(cat /run/mosquitto/mosquitto.pid),"; then
        echo "bench-peers: the system's mosquitto service holds port $port; stopping it"
        stop_system_mosquitto
        sleep 1
    fi
    if port_accepts "$port"; then
        echo "bench-peers: port $port, wanted by $name, is already taken:" >&2
        ss -ltnp "sport = :$port" >&2 2>/dev/null || true
        return 1
    fi
    case $name in
        shardmq | shardmq-1 | shardmq-durable)
            # Queues as deep as mosquitto's max_queued_messages; the byte bound is
            # above what 100000 small messages take, so the count binds first.
            # shardmq-1 differs only in its shard count, shardmq-durable only in its
            # data directory.
            local n=$shards
            if [ "$name" = shardmq-1 ]; then n=1; fi
            # Warnings and errors only, as mosquitto.conf logs (log_type error and
            # warning, connection_messages false): no line per connect and disconnect.
            cmd=(target/release/shardmq --shards "$n" --log-level warn
                --max-queued-messages 100000 --max-queued-bytes 16777216)
            if [ "$name" = shardmq-durable ]; then
                broker_data=$(mktemp -d "${TMPDIR:-/tmp}/bench-peers-$name.XXXXXX")
                cmd+=(--data-dir "$broker_data" --fsync always)
            fi
            if [ "$mode" = tls ]; then
                cmd+=(--tls-listen "127.0.0.1:$port" --cert "$tls_dir/server.pem"
                    --key "$tls_dir/server.key" --password-file "$tls_dir/passwd")
            else
                cmd+=(--listen "127.0.0.1:$port")
            fi ;;
        mosquitto | mosquitto-persist)
            local conf=$run_dir/$name.conf
            sed -E "s/^listener [0-9]+ 127\.0\.0\.1\$/listener $port 127.0.0.1/" \
                scripts/peers/mosquitto.conf >"$conf"
            grep -qx "listener $port 127.0.0.1" "$conf" || {
                echo "bench-peers: no 'listener PORT 127.0.0.1' line in scripts/peers/mosquitto.conf" >&2
                return 1
            }
            if [ "$name" = mosquitto-persist ]; then
                broker_data=$(mktemp -d "${TMPDIR:-/tmp}/bench-peers-$name.XXXXXX")
                # What mosquitto documents: the in-memory state is written to
                # persistence_location/mosquitto.db every autosave_interval seconds
                # (1, its shortest) and at exit; nothing per message.
                sed -i -E '/^persistence /d' "$conf"
                {
                    echo
                    echo "# Added by bench-peers.sh for $name."
                    echo "persistence true"
                    echo "persistence_location $broker_data/"
                    echo "autosave_interval 1"
                    echo "autosave_on_changes false"
                    # As root, mosquitto would switch to the mosquitto user and could
                    # not write the data directory.
                    if [ "$(id -u)" -eq 0 ]; then echo "user root"; fi
                } >>"$conf"
            fi
            if [ "$mode" = tls ]; then
                # The same settings, the listener made TLS and closed to anonymous
                # clients.
                sed -i -E '/^allow_anonymous /d' "$conf"
                {
                    echo
                    echo "# Added by bench-peers.sh for the TLS scenarios."
                    echo "certfile $tls_dir/server.pem"
                    echo "keyfile $tls_dir/server.key"
                    echo "password_file $tls_dir/passwd"
                    echo "allow_anonymous false"
                    # As root, mosquitto would switch to the mosquitto user and could
                    # not read the run's files.
                    if [ "$(id -u)" -eq 0 ]; then echo "user root"; fi
                } >>"$conf"
            fi
            cmd=("$mosquitto_bin" -c "$conf") ;;
        rumqttd)
            # The first listen line is the 3.1.1 listener's, the second the 5.0 one's.
            awk -v p4="$port" -v p5="$RUMQTTD_V5_PORT" '
                /^listen = "127\.0\.0\.1:[0-9]+"$/ { n++; print "listen = \"127.0.0.1:" (n == 1 ? p4 : p5) "\""; next }
                { print }' scripts/peers/rumqttd.toml >"$run_dir/rumqttd.toml"
            grep -qx "listen = \"127.0.0.1:$port\"" "$run_dir/rumqttd.toml" &&
                grep -qx "listen = \"127.0.0.1:$RUMQTTD_V5_PORT\"" "$run_dir/rumqttd.toml" || {
                echo "bench-peers: scripts/peers/rumqttd.toml needs two 'listen = \"127.0.0.1:PORT\"' lines (v4, then v5)" >&2
                return 1
            }
            cmd=("$rumqttd_bin" --quiet --config "$run_dir/rumqttd.toml") ;;
    esac
    # NO_COLOR: plain logs, without terminal colour codes.
    echo "+ NO_COLOR=1 ${cmd[*]} >>$log 2>&1 &"
    echo "--- bench-peers: starting $name ($mode) ---" >>"$log"
    NO_COLOR=1 "${cmd[@]}" >>"$log" 2>&1 &
    broker_pid=$! broker_mode=$mode
    local up=0
    for _ in $(seq 100); do
        if ! alive "$broker_pid"; then
            echo "bench-peers: $name exited at start; its log ($log):" >&2
            tail -n 20 "$log" >&2
            wait "$broker_pid" 2>/dev/null || true
            broker_pid=""
            remove_data
            return 1
        fi
        if port_accepts "$port"; then up=1; break; fi
        sleep 0.1
    done
    if [ "$up" = 0 ]; then
        echo "bench-peers: $name does not accept on port $port after 10 s" >&2
        stop_broker
        return 1
    fi
    # An MQTT round trip, not only a TCP accept, when Debian's clients are here.
    if [ "$mode" = tls ]; then
        probe_tls=(--cafile "$tls_dir/ca.pem" -u "$TLS_USER" -P "$TLS_PASSWORD")
    fi
    if command -v mosquitto_pub >/dev/null 2>&1; then
        if ! run timeout 10 mosquitto_pub -h localhost -p "$port" -V mqttv311 -q 1 \
            "${probe_tls[@]}" -i bench-peers-probe -t bench-peers/probe -m probe; then
            echo "bench-peers: $name accepts on port $port but does not answer MQTT" >&2
            stop_broker
            return 1
        fi
    fi
    echo "bench-peers: $name is up, pid $broker_pid, port $port ($mode)"
}

# SIGTERM, up to 10 s to exit, then SIGKILL.
stop_broker() {
    [ -n "$broker_pid" ] || return 0
    local pid=$broker_pid
    broker_pid="" broker_mode=""
    echo "+ kill -TERM $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        echo "+ kill -KILL $pid   # still running 10 s after SIGTERM"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    remove_data
}

# The persistence variants' data directory, gone with the broker that used it.
remove_data() {
    if [ -n "$broker_data" ]; then
        echo "+ rm -rf $broker_data"
        rm -rf "$broker_data"
        broker_data=""
    fi
}

# CPU this run did not get while a scenario ran: time other processes were busy (the
# machine's busy time in /proc/stat, less the broker's from /proc/PID/stat and this
# script's children's from bash `times`, which counts the generator once it is
# reaped), and time the hypervisor gave these virtual cores to someone else (steal).
# Either skews every figure of that scenario.
HZ=$(getconf CLK_TCK)
NOISE_CORES=0.2
# "busy steal": user + nice + system + irq + softirq, and steal.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
proc_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    # shellcheck disable=SC2086 # split the fields after "pid (comm) "
    set -- ${stat##*) }
    echo $((${12} + ${13}))
}
# Sets $children: this shell's reaped children's CPU time, in ticks. Not a function
# called in $(...): that would run `times` in a subshell, which has no children yet.
children_ticks() {
    times >"$run_dir/.times"
    children=$(awk -v hz="$HZ" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%d", t * hz
    }' "$run_dir/.times")
}

trap stop_broker EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

failures=()
noisy=()
# *-v5 rows a broker refused (CONNACK: protocol version not accepted), and those a
# broker with partial 5.0 support could not run: reported, not failures.
refused=()
partial=()
for name in $brokers; do
    echo
    echo "=== $name ==="
    # The broker starts as its first scenario wants it: plain, or TLS.
    first=""
    for label in $labels; do
        runs_label "$name" "$label" >/dev/null || continue
        first=$label
        break
    done
    if [ -z "$first" ]; then
        echo "bench-peers: $name runs none of the selected scenarios"
        continue
    fi
    mode=plain
    if is_tls_label "$first"; then mode=tls; fi
    if ! start_broker "$name" "$mode"; then
        failures+=("$name: did not start")
        continue
    fi
    for label in $labels; do
        want=plain
        if is_tls_label "$label"; then want=tls; fi
        if ! why=$(runs_label "$name" "$label"); then
            echo "bench-peers: skipping $label on $name: $why"
            continue
        fi
        if [ "$want" != "$broker_mode" ] && [ -n "$broker_pid" ]; then
            # The TLS scenarios get the broker restarted, TLS only, so that the plain
            # ones keep the broker exactly as it was.
            echo "bench-peers: restarting $name for the $want scenarios"
            stop_broker
            start_broker "$name" "$want" || { failures+=("$name: did not start ($want)"); break; }
        fi
        if [ -z "$broker_pid" ] || ! alive "$broker_pid"; then
            # It died in the previous scenario; the rest still get a broker, though its
            # end-of-set memory no longer covers the whole set.
            failures+=("$name: exited before $label")
            echo "bench-peers: $name is gone; starting it again" >&2
            wait "$broker_pid" 2>/dev/null || true
            broker_pid=""
            remove_data
            start_broker "$name" "$want" || { failures+=("$name: did not restart"); break; }
        fi
        # shellcheck disable=SC2207 # the arguments are plain words
        args=($(scenario_args "$label"))
        # Bounded even if the generator hangs: warmup + duration + 2 minutes.
        # --foreground keeps it in this script's process group, so Ctrl-C reaches it.
        limit=$(awk -v d="$duration" -v w="$warmup" 'BEGIN { printf "%d", d + w + 200 }')
        port=${PORT[$name]}
        if is_v5_label "$label" && [ "$name" = rumqttd ]; then port=$RUMQTTD_V5_PORT; fi
        cmd=(timeout --foreground --signal=INT --kill-after=10 "$limit"
            target/release/shardmq-loadtest "${args[@]}" --broker "127.0.0.1:$port"
            --payload "$payload" --duration "$duration" --warmup "$warmup"
            --broker-pid "$broker_pid" --broker-name "$name" --label "$label"
            --json "$run_dir/$name-$label.json")
        if [ "$want" = tls ]; then
            cmd+=(--tls --cafile "$tls_dir/ca.pem" --tls-server-name localhost
                --username "$TLS_USER" --password "$TLS_PASSWORD")
        fi
        if [ "$label" = storm-resume ]; then
            # The sessions the measured storm resumes (same client ids), unmeasured.
            pre=(timeout --foreground --signal=INT --kill-after=10 "$limit"
                target/release/shardmq-loadtest "${args[@]}" --broker "127.0.0.1:$port"
                --duration 1 --warmup 0 --connect-concurrency 16)
            echo
            echo "+ ${pre[*]}"
            if [ "$dry_run" != 1 ]; then
                "${pre[@]}" >"$run_dir/$name-$label-sessions.log" 2>&1 ||
                    failures+=("$name $label: making the sessions failed")
            fi
        fi
        echo
        echo "+ ${cmd[*]}"
        [ "$dry_run" = 1 ] && continue
        rc=0
        children_ticks
        read -r m0 s0 < <(machine_ticks)
        b0=$(proc_ticks "$broker_pid") c0=$children t0=$(date +%s.%N)
        { "${cmd[@]}" 2>&1 | tee "$run_dir/$name-$label.log"; } || rc=$?
        read -r m1 s1 < <(machine_ticks)
        b1=$(proc_ticks "$broker_pid") t1=$(date +%s.%N)
        children_ticks
        c1=$children
        # A broker that died in the run has no ticks left to read.
        if [ "$b1" -lt "$b0" ]; then b1=$b0; fi
        read -r other stolen < <(awk -v m=$((m1 - m0)) -v s=$((s1 - s0)) -v b=$((b1 - b0)) \
            -v c=$((c1 - c0)) -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" -v hz="$HZ" \
            'BEGIN { o = (m - b - c) / hz / t; printf "%.2f %.2f\n", o < 0 ? 0 : o, s / hz / t }')
        echo "$name $label: other processes $other cores, stolen by the hypervisor $stolen cores" \
            >>"$run_dir/noise.txt"
        if awk -v o="$other" -v s="$stolen" -v n="$NOISE_CORES" 'BEGIN { exit !(o + s > n) }'; then
            noisy+=("$name $label: other processes $other cores, stolen $stolen cores")
            echo "bench-peers: $name $label lost $other cores to other processes and $stolen" \
                "to the hypervisor; its figures are suspect" >&2
        fi
        if [ "$rc" != 0 ] && is_v5_label "$label" &&
            grep -q "does not accept MQTT 5.0" "$run_dir/$name-$label.log"; then
            refused+=("$name $label")
            echo "bench-peers: $name $label: refused (5.0 not accepted)"
        elif [ "$rc" != 0 ] && is_v5_label "$label" && v5_partial "$name"; then
            partial+=("$name $label")
            echo "bench-peers: $name $label: could not run (exit $rc; partial 5.0 support," \
                "see $run_dir/$name-$label.log)"
        elif [ "$rc" != 0 ]; then
            failures+=("$name $label: exit $rc")
            echo "bench-peers: $name $label failed (exit $rc); going on" >&2
        fi
    done
    stop_broker
done
rm -f "$run_dir/.times"

# --- 5. Report --------------------------------------------------------------------

echo
files=()
for label in $labels; do
    for name in $brokers; do
        f=$run_dir/$name-$label.json
        if [ -s "$f" ]; then files+=("$f"); fi
    done
done
# shardmq-1 would count as a variant by its name alone; --variant says so outright.
report=(target/release/shardmq-loadtest report --reference shardmq --variant shardmq-1)
if [ "$dry_run" = 1 ]; then
    echo "+ ${report[*]} --svg $run_dir/chart.svg --json $run_dir/summary.json $run_dir/<broker>-<label>.json ... | tee $run_dir/table.txt"
    echo "+ ${report[*]} --markdown $run_dir/<broker>-<label>.json ... >$run_dir/table.md"
elif [ ${#files[@]} -eq 0 ]; then
    echo "bench-peers: no results to report" >&2
else
    echo "+ ${report[*]} --svg $run_dir/chart.svg --json $run_dir/summary.json ${files[*]} | tee $run_dir/table.txt"
    rc=0
    { "${report[@]}" --svg "$run_dir/chart.svg" --json "$run_dir/summary.json" "${files[@]}" |
        tee "$run_dir/table.txt"; } || rc=$?
    [ "$rc" = 0 ] || failures+=("report: exit $rc")
    echo "+ ${report[*]} --markdown ${files[*]} >$run_dir/table.md"
    "${report[@]}" --markdown "${files[@]}" >"$run_dir/table.md" || failures+=("report --markdown: exit $?")
    # A broker left out of the TLS rows shows dashes there; the tables say why.
    skipped=""
    for name in $brokers; do
        if no_tls "$name"; then skipped="$skipped $name"; fi
    done
    if has_tls && [ -n "$skipped" ]; then
        note="-${skipped// /, }: not run on the *-tls rows (no TLS listener in this suite); their dashes there are not failures."
        note=${note/-, /- }
        echo "$note" | tee -a "$run_dir/table.txt"
        printf '\n%s\n' "$note" >>"$run_dir/table.md"
    fi
    # The same for the rows the persistence variants leave out, and for the
    # persistent-subscriber row that shardmq-1 and rumqttd leave out.
    skipped=""
    for name in $brokers; do
        if is_durable "$name"; then skipped="$skipped $name"; fi
    done
    if [ -n "$skipped" ]; then
        note="-${skipped// /, }: persistence variants, run only on $DURABLE_RUNS; their dashes elsewhere are not failures. shardmq-durable counts as a variant of shardmq: its scaling ratio is shardmq in memory divided by shardmq durable."
        note=${note/-, /- }
        echo "$note" | tee -a "$run_dir/table.txt"
        printf '\n%s\n' "$note" >>"$run_dir/table.md"
    fi
    skipped=""
    for name in $brokers; do
        if [[ " $NO_PERSIST_BROKERS " == *" $name "* ]]; then skipped="$skipped $name"; fi
    done
    if [[ " $labels " == *" fanout-1000-q1-ps "* ]] && [ -n "$skipped" ]; then
        note="-${skipped// /, }: not run on fanout-1000-q1-ps (not in the persistence comparison); their dashes there are not failures."
        note=${note/-, /- }
        echo "$note" | tee -a "$run_dir/table.txt"
        printf '\n%s\n' "$note" >>"$run_dir/table.md"
    fi
    # The *-v5 rows a broker refused or could not run: dashes that are not failures.
    for pair in "${refused[@]}"; do
        note="- ${pair%% *} on ${pair#* }: refused (5.0 not accepted): the broker answered the 5.0 CONNECT with a refusal of the protocol version; the row fills in once it accepts 5.0."
        echo "$note" | tee -a "$run_dir/table.txt"
        printf '\n%s\n' "$note" >>"$run_dir/table.md"
    done
    for pair in "${partial[@]}"; do
        note="- ${pair%% *} on ${pair#* }: could not run (its 5.0 support is partial; see $run_dir/${pair%% *}-${pair#* }.log); the dash there is not a failure."
        echo "$note" | tee -a "$run_dir/table.txt"
        printf '\n%s\n' "$note" >>"$run_dir/table.md"
    done
    run ln -sfn "$run_id" bench-results/latest
fi

echo
if [ ${#noisy[@]} -gt 0 ]; then
    echo "bench-peers: other processes and the hypervisor took more than $NOISE_CORES cores" \
        "(on average) during ${#noisy[@]} scenario(s); rerun those on a quiet machine" \
        "($run_dir/noise.txt):" >&2
    printf '  %s\n' "${noisy[@]}" >&2
fi
if [ ${#failures[@]} -gt 0 ]; then
    echo "bench-peers: ${#failures[@]} failure(s):" >&2
    printf '  %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "bench-peers: done; results in $run_dir"
