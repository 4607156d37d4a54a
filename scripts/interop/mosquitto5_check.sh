#!/usr/bin/env bash
# MQTT 5.0 with Debian's mosquitto clients (mosquitto_pub/mosquitto_sub -V 5 and -D
# properties): user properties, content type, response topic, correlation data,
# payload format indicator and message expiry round trip; a retained message expires;
# an offline session (-c, session-expiry-interval) gets what was queued; a 3.1.1
# mosquitto_sub gets a 5.0 message. INTEROP_IDS0 / INTEROP_IDS1 (shard_ids.py) place
# the subscriber and the publisher on different shards when set.
# Usage: scripts/interop/mosquitto5_check.sh HOST PORT WORK_DIR
set -uo pipefail
host=$1 port=$2 work=$3
mkdir -p "$work"
read -ra ids0 <<<"${INTEROP_IDS0:-m5a-$$ m5b-$$ m5c-$$ m5d-$$}"
read -ra ids1 <<<"${INTEROP_IDS1:-m5e-$$ m5f-$$ m5g-$$ m5h-$$}"
fail=0 passed=0 failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
bad() { echo "FAIL $1: $2"; failed=$((failed + 1)); fail=1; }
t="interop5/mosq-$$"

# 1. Properties round trip, subscriber on shard 1, publisher on shard 0.
mosquitto_sub -V 5 -h "$host" -p "$port" -i "${ids1[0]}" -t "$t/props" -q 1 -C 1 -W 5 \
  -F '%t|%P|%C|%R|%D|%F|%E|%p' >"$work/props.out" 2>&1 &
sub=$!
sleep 0.5
mosquitto_pub -V 5 -h "$host" -p "$port" -i "${ids0[0]}" -t "$t/props" -q 1 -m 'héllo' \
  -D publish user-property a 1 -D publish user-property b 2 -D publish user-property a 3 \
  -D publish content-type text/plain -D publish response-topic "$t/reply" \
  -D publish correlation-data c0rr -D publish payload-format-indicator 1 \
  -D publish message-expiry-interval 60
wait $sub
got=$(cat "$work/props.out")
IFS='|' read -r gt gp gc gr gd gf ge gpay <<<"$got"
what="mosquitto -V 5: user properties, content type, response topic, correlation data, payload format, expiry round trip"
if [ "$gt" = "$t/props" ] && [ "$gp" = "a:1 b:2 a:3" ] && [ "$gc" = text/plain ] && [ "$gr" = "$t/reply" ] &&
  [ "$gd" = c0rr ] && [ "$gf" = 1 ] && [ -n "$ge" ] && [ "$ge" -le 60 ] && [ "$ge" -ge 58 ] && [ "$gpay" = 'héllo' ]; then
  ok "$what"
else
  bad "$what" "got '$got'"
fi

# 2. A retained message with message-expiry-interval 1 is gone after 2.5 s.
mosquitto_pub -V 5 -h "$host" -p "$port" -i "${ids0[1]}" -t "$t/ret" -q 1 -r -m soon-gone \
  -D publish message-expiry-interval 1
mosquitto_pub -V 5 -h "$host" -p "$port" -i "${ids0[1]}" -t "$t/ret2" -q 1 -r -m stays \
  -D publish message-expiry-interval 30
sleep 2.5
got=$(mosquitto_sub -V 5 -h "$host" -p "$port" -i "${ids1[1]}" -t "$t/ret" -t "$t/ret2" -q 1 -W 2 \
  -F '%t %p %E' 2>/dev/null)
what="mosquitto -V 5: an expired retained message is not sent, a live one is with its remaining expiry (§3.3.2.3.3)"
if ! grep -q soon-gone <<<"$got" && grep -Eq "^$t/ret2 stays (2[0-8])$" <<<"$got"; then
  ok "$what"
else
  bad "$what" "got '$(tr '\n' ';' <<<"$got")'"
fi
mosquitto_pub -V 5 -h "$host" -p "$port" -t "$t/ret" -r -n
mosquitto_pub -V 5 -h "$host" -p "$port" -t "$t/ret2" -r -n

# 3. Session expiry with -c -x 60 (session-expiry-interval): QoS 1 queued while offline arrives on reconnect.
mosquitto_sub -V 5 -h "$host" -p "$port" -i "${ids1[2]}" -c -x 60 -t "$t/offline" -q 1 -E >/dev/null 2>&1
mosquitto_pub -V 5 -h "$host" -p "$port" -i "${ids0[2]}" -t "$t/offline" -q 1 -m queued \
  -D publish user-property k v
got=$(mosquitto_sub -V 5 -h "$host" -p "$port" -i "${ids1[2]}" -c -x 60 -t "$t/offline" -q 1 -C 1 -W 5 \
  -F '%p %P' 2>&1)
what="mosquitto -V 5 -c -x 60 (session expiry): the message queued offline arrives, with its property"
if [ "$got" = "queued k:v" ]; then ok "$what"; else bad "$what" "got '$got'"; fi
mosquitto_sub -V 5 -h "$host" -p "$port" -i "${ids1[2]}" -t "$t/offline" -E >/dev/null 2>&1

# 4. A 3.1.1 mosquitto_sub receives a 5.0 publisher's message (without properties).
mosquitto_sub -V mqttv311 -h "$host" -p "$port" -i "${ids1[3]}" -t "$t/old" -q 1 -C 1 -W 5 \
  -F '%t %p' >"$work/old.out" 2>&1 &
sub=$!
sleep 0.5
mosquitto_pub -V 5 -h "$host" -p "$port" -i "${ids0[3]}" -t "$t/old" -q 1 -m for-311 \
  -D publish user-property a 1 -D publish content-type text/plain
wait $sub
what="mosquitto: 5.0 publisher -> 3.1.1 subscriber"
if [ "$(cat "$work/old.out")" = "$t/old for-311" ]; then ok "$what"; else bad "$what" "got '$(cat "$work/old.out")'"; fi

echo "mosquitto5: $passed passed, $failed failed"
exit $fail
