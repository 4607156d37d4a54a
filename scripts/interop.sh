#!/usr/bin/env bash
# Runs shardmq against clients nobody here wrote: Debian's mosquitto clients
# (quickstart.sh, and secured_check.sh: passwords and ACLs with -u/-P), Eclipse
# paho-mqtt for Python and MQTT.js for Node. Installs what is
# missing into a scratch folder, starts a 2-shard release broker on a free port, runs
# every check, stops the broker. Usage: scripts/interop.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=${INTEROP_DIR:-/tmp/shardmq-interop}
mkdir -p "$work"
python3 -c 'import paho.mqtt' 2>/dev/null || pip install -q --target "$work/py" "paho-mqtt>=2,<3"
[ -d "$work/node_modules/mqtt" ] || (cd "$work" && npm init -y >/dev/null && npm install -q mqtt@5 >/dev/null)
cargo build --release -q
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/shardmq --listen "127.0.0.1:$port" --shards 2 >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null || true' EXIT
sleep 1
status=0
bash scripts/quickstart.sh 127.0.0.1 "$port" || status=1
PYTHONPATH="$work/py" python3 scripts/interop/paho_check.py 127.0.0.1 "$port" || status=1
NODE_PATH="$work/node_modules" node scripts/interop/mqttjs_check.js 127.0.0.1 "$port" || status=1
port2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bash scripts/interop/secured_check.sh ./target/release/shardmq "$port2" "$work/secured" || status=1
bash scripts/browser-check.sh || status=1
exit $status
