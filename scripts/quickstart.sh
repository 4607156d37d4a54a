#!/usr/bin/env bash
# Replays README's quick start against a running broker with Debian's mosquitto
# clients (installed if missing): QoS 0, 1 and 2 publish/subscribe and a retained
# message. Usage: scripts/quickstart.sh [HOST] [PORT]   (default localhost 1883)
set -euo pipefail
host=${1:-localhost}
port=${2:-1883}
if ! command -v mosquitto_sub >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
for q in 0 1 2; do
  timeout 5 mosquitto_sub -h "$host" -p "$port" -t "demo/#" -q "$q" -C 1 -v >"$tmp/sub$q" &
  pid=$!
  sleep 0.5
  mosquitto_pub -h "$host" -p "$port" -t demo/hello -q "$q" -m "hello at QoS $q"
  if wait "$pid" && grep -qx "demo/hello hello at QoS $q" "$tmp/sub$q"; then
    echo "ok   QoS $q: $(cat "$tmp/sub$q")"
  else
    echo "FAIL QoS $q"; fail=1
  fi
done
mosquitto_pub -h "$host" -p "$port" -t demo/status -r -q 1 -m online
got=$(timeout 5 mosquitto_sub -h "$host" -p "$port" -t "demo/+" -C 1 -F '%r %t %p' || true)
if [ "$got" = "1 demo/status online" ]; then
  echo "ok   retained: $got (retain flag, topic, payload)"
else
  echo "FAIL retained: got '$got'"; fail=1
fi
mosquitto_pub -h "$host" -p "$port" -t demo/status -r -n   # delete it again
exit $fail
