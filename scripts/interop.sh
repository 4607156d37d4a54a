#!/usr/bin/env bash
# Runs shardmq against clients nobody here wrote: Debian's mosquitto clients
# (quickstart.sh, and secured_check.sh: passwords and ACLs with -u/-P), Eclipse
# paho-mqtt for Python and MQTT.js for Node. Installs what is
# missing into a scratch folder, starts a 2-shard release broker on a free port, runs
# every check, stops the broker. Then the MQTT 5.0 checks (paho5_check.py,
# mqttjs5_check.js, mosquitto5_check.sh) against a second 2-shard broker with a
# password-file listener, max_keepalive = 60 and metrics, with client ids found on each
# shard (shard_ids.py) so every check crosses shards. Usage: scripts/interop.sh
# (CARGO_TARGET_DIR is honoured).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${INTEROP_DIR:-/tmp/shardmq-interop}
mkdir -p "$work"
python3 -c 'import paho.mqtt' 2>/dev/null || pip install -q --target "$work/py" "paho-mqtt>=2,<3"
[ -d "$work/node_modules/mqtt" ] || (cd "$work" && npm init -y >/dev/null && npm install -q mqtt@5 >/dev/null)
cargo build --release -q
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bin=${CARGO_TARGET_DIR:-target}/release/shardmq
"$bin" --listen "127.0.0.1:$port" --shards 2 >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null || true' EXIT
sleep 1
status=0
bash scripts/quickstart.sh 127.0.0.1 "$port" || status=1
PYTHONPATH="$work/py" python3 scripts/interop/paho_check.py 127.0.0.1 "$port" || status=1
NODE_PATH="$work/node_modules" node scripts/interop/mqttjs_check.js 127.0.0.1 "$port" || status=1
port2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bash scripts/interop/secured_check.sh "$bin" "$port2" "$work/secured" || status=1
bash scripts/browser-check.sh || status=1

# MQTT 5.0: an anonymous listener, one with a password file, metrics for shard_ids.py.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
v5="$work/v5" p5=$(free_port) s5=$(free_port) m5=$(free_port)
mkdir -p "$v5"
"$bin" passwd -c -b "$v5/passwd" alice wonderland
cat >"$v5/broker.toml" <<TOML
listeners = ["127.0.0.1:$p5"]
shards = 2
max_keepalive = 60
metrics_listen = "127.0.0.1:$m5"
response_information = "replies/%c"

[[listener]]
address = "127.0.0.1:$s5"
password_file = "$v5/passwd"
TOML
"$bin" --config "$v5/broker.toml" >"$v5/broker.log" 2>&1 &
broker5=$!
trap 'kill $broker $broker5 2>/dev/null; wait $broker $broker5 2>/dev/null || true' EXIT
sleep 1
{ read -r ids0; read -r ids1; } < <(python3 scripts/interop/shard_ids.py 127.0.0.1 "$p5" "127.0.0.1:$m5" "i5-$$" 40)
export INTEROP_IDS0=$ids0 INTEROP_IDS1=$ids1
PYTHONPATH="$work/py" python3 scripts/interop/paho5_check.py 127.0.0.1 "$p5" "$s5" 60 || status=1
NODE_PATH="$work/node_modules" node scripts/interop/mqttjs5_check.js 127.0.0.1 "$p5" "$s5" || status=1
bash scripts/interop/mosquitto5_check.sh 127.0.0.1 "$p5" "$v5" || status=1
exit $status
