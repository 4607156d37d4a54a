#!/usr/bin/env bash
# MQTT over WebSockets from a real browser: headless Chromium (Debian's
# chromium, driven by playwright-core) loads scripts/browser/page.html, which
# uses MQTT.js's browser bundle to connect to a 2-shard release broker over
# ws:// and over wss://, subscribe, publish at QoS 1 and receive its own
# message. wss uses a throwaway CA and server certificate; Chromium is told to
# accept that server key via --ignore-certificate-errors-spki-list. Installs
# what is missing (apt: chromium; npm: playwright-core, mqtt into a scratch
# folder), everything on loopback. Screenshots: $BROWSER_DIR/{ws,wss}.png.
# Usage: scripts/browser-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BROWSER_DIR:-/tmp/shardmq-browser}
mkdir -p "$work"
log() { echo "browser-check: $*"; }

if ! [ -x /usr/bin/chromium ]; then
  log "installing chromium (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >"$work/apt.log" 2>&1 \
    || { apt-get update -q >>"$work/apt.log" 2>&1 && apt-get install -y -q chromium >>"$work/apt.log" 2>&1; }
fi
if ! [ -d "$work/node_modules/playwright-core" ] || ! [ -f "$work/node_modules/mqtt/dist/mqtt.min.js" ]; then
  log "installing playwright-core and mqtt@5 (npm) into $work"
  (cd "$work" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install -q playwright-core mqtt@5 >/dev/null)
fi

# A throwaway CA and a server certificate for 127.0.0.1 and localhost.
pki="$work/pki"
rm -rf "$pki" && mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=shardmq browser-check CA" -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=127.0.0.1" -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$pki/server.ext"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 2 -extfile "$pki/server.ext" -out "$pki/server.pem" 2>/dev/null
cat "$pki/server.pem" "$pki/ca.pem" >"$pki/chain.pem"
spki=$(openssl x509 -in "$pki/server.pem" -noout -pubkey | openssl pkey -pubin -outform der \
  | openssl dgst -sha256 -binary | base64)
log "server certificate for 127.0.0.1/localhost from a throwaway CA, SPKI sha256 $spki"

cargo build --release -q
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p1=$(free_port); p2=$(free_port); p3=$(free_port)
./target/release/shardmq --shards 2 --listen "127.0.0.1:$p1" --ws-listen "127.0.0.1:$p2" \
  --wss-listen "127.0.0.1:$p3" --cert "$pki/chain.pem" --key "$pki/server.key" >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null || true' EXIT
# Wait (bounded) until the WebSocket listeners accept connections.
for _ in $(seq 50); do
  python3 -c "import socket,sys; [socket.create_connection(('127.0.0.1',p),0.2).close() for p in sys.argv[1:]]" "$p2" "$p3" 2>/dev/null && break
  kill -0 $broker 2>/dev/null || { log "FAIL broker exited"; cat "$work/broker.log"; exit 1; }
  sleep 0.1
done
log "broker pid $broker: tcp $p1, ws $p2, wss $p3 (log $work/broker.log)"

status=0
timeout 120 node scripts/browser/run.mjs --deps "$work" --out "$work" --spki "$spki" \
  "ws=ws://127.0.0.1:$p2/mqtt" "wss=wss://127.0.0.1:$p3/mqtt" || status=1
if [ $status -ne 0 ]; then
  log "FAIL; broker log:"
  sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/  broker: /' "$work/broker.log"
else
  log "PASS ws and wss"
fi
exit $status
