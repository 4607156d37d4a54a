#!/usr/bin/env bash
# Passwords and ACLs with Debian's mosquitto clients (-u/-P): starts a 2-shard broker
# on HOST:PORT with a password file written by `shardmq passwd` and an ACL, checks who
# gets in and what each may publish and receive, then stops it.
# Usage: scripts/interop/secured_check.sh BROKER_BINARY PORT WORK_DIR
set -euo pipefail
bin=$1 port=$2 work=$3
mkdir -p "$work"
pw="$work/passwd" acl="$work/acl"
"$bin" passwd -c -b "$pw" alice wonderland
"$bin" passwd -b "$pw" bob builder
cat >"$acl" <<'ACL'
user alice
topic readwrite alice/#
topic read shared/#
user bob
topic write shared/#
topic write alice/#
ACL
"$bin" --listen "127.0.0.1:$port" --shards 2 --password-file "$pw" --acl-file "$acl" \
  >"$work/secured.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done
fail=0
check() { if "$@"; then echo "ok: ${what}"; else echo "FAILED: ${what}"; fail=1; fi; }
pub() { mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 "$@" 2>/dev/null; }

what="right password accepted";  check pub -u alice -P wonderland -t alice/x -m 1
what="wrong password refused";   check bash -c "! mosquitto_pub -h 127.0.0.1 -p $port -u alice -P nope -t alice/x -m 1 2>/dev/null"
what="unknown user refused";     check bash -c "! mosquitto_pub -h 127.0.0.1 -p $port -u eve -P wonderland -t alice/x -m 1 2>/dev/null"
what="anonymous refused";        check bash -c "! mosquitto_pub -h 127.0.0.1 -p $port -t alice/x -m 1 2>/dev/null"

# Alice listens on everything; she may read alice/# and shared/# only.
mosquitto_sub -h 127.0.0.1 -p "$port" -u alice -P wonderland -t '#' -q 1 -v -C 2 -W 5 \
  >"$work/alice.out" 2>&1 &
sub=$!
sleep 0.5
pub -u bob -P builder -t bob/private -m 'not for alice'   # bob may not write here: dropped
pub -u bob -P builder -t shared/news -m 'for alice'
pub -u alice -P wonderland -t alice/own -m 'hers'
wait $sub || true
what="alice got shared/news";    check grep -qx 'shared/news for alice' "$work/alice.out"
what="alice got alice/own";      check grep -qx 'alice/own hers' "$work/alice.out"
what="nothing else reached her"; check bash -c "! grep -q private '$work/alice.out'"
exit $fail
