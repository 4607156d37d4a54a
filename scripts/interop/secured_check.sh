#!/usr/bin/env bash
# Passwords, ACLs and TLS with Debian's mosquitto clients (-u/-P, --cafile, --cert and
# --key): starts a 2-shard broker on 127.0.0.1:PORT (and two TLS listeners on free
# ports, one requiring client certificates whose CN is the username) with a password
# file written by `shardmq passwd` and an ACL, checks who gets in and what each may
# publish and receive, then stops it.
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
# A CA, a server certificate for 127.0.0.1, and a client certificate (CN alice).
tls_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mtls_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(
  cd "$work"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=interop CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key \
    -out server.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=alice" -keyout client.key \
    -out client.csr 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >client.ext
  openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile client.ext -out client.pem 2>/dev/null
)
cat >"$work/broker.toml" <<TOML
listeners = ["127.0.0.1:$port"]
shards = 2
password_file = "$pw"
acl_file = "$acl"
cert = "$work/server.pem"
key = "$work/server.key"

[[listener]]
address = "127.0.0.1:$tls_port"
transport = "tls"

[[listener]]
address = "127.0.0.1:$mtls_port"
transport = "tls"
client_ca = "$work/ca.pem"
require_client_cert = true
use_identity_as_username = true
TOML
"$bin" --config "$work/broker.toml" >"$work/secured.log" 2>&1 &
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

# Over TLS: --cafile to trust the server, -u/-P as before.
tls() { mosquitto_pub -h 127.0.0.1 -p "$tls_port" --cafile "$work/ca.pem" -q 1 "$@" 2>/dev/null; }
what="TLS with the right password";       check tls -u alice -P wonderland -t alice/x -m 1
what="TLS with a wrong password refused"; check bash -c "! mosquitto_pub -h 127.0.0.1 -p $tls_port --cafile $work/ca.pem -u alice -P nope -t alice/x -m 1 2>/dev/null"
what="TLS without trusting the CA fails"; check bash -c "! mosquitto_pub -h 127.0.0.1 -p $tls_port --cafile /etc/ssl/certs/ca-certificates.crt -u alice -P wonderland -t alice/x -m 1 2>/dev/null"
# A client certificate whose CN (alice) is the username: no password; the ACL applies.
mosquitto_sub -h 127.0.0.1 -p "$mtls_port" --cafile "$work/ca.pem" --cert "$work/client.pem" \
  --key "$work/client.key" -t 'alice/#' -q 1 -v -C 1 -W 5 >"$work/mtls.out" 2>&1 &
sub=$!
sleep 0.5
tls -u alice -P wonderland -t alice/tls -m 'over tls'
wait $sub || true
what="certificate CN as username receives"; check grep -qx 'alice/tls over tls' "$work/mtls.out"
what="no client certificate, no connection"; check bash -c "! mosquitto_pub -h 127.0.0.1 -p $mtls_port --cafile $work/ca.pem -t alice/x -m 1 2>/dev/null"
exit $fail
