#!/usr/bin/env bash
# Builds shardmq's Debian package with cargo-deb, installs it, and checks it the way
# systemd would use it:
#   1. installs what is missing: cargo-deb (crates.io), and Debian's systemd (for
#      systemd-analyze), mosquitto-clients, curl and python3;
#   2. `cargo deb`, then `dpkg -i` (local edits of /etc/shardmq are kept);
#   3. `systemd-analyze verify` on the installed unit, and `shardmq check-config` on
#      the installed config;
#   4. runs the installed unit's ExecStart= as the unit would: as its User=, with
#      its Environment=, LimitNOFILE= and LimitMEMLOCK=, no capabilities and
#      no_new_privs, and a NOTIFY_SOCKET that stands in for systemd's, so READY=1 and
#      STOPPING=1 are checked too;
#   5. a client publishes and another receives over the listener, $SYS answers,
#      /healthz answers (when metrics_listen is set), ExecReload= (SIGHUP) reloads,
#      and SIGTERM ends the broker with exit status 0.
# Prints PASS or FAIL and exits non-zero on failure. The package stays installed;
# `dpkg -r shardmq` removes it.
#
# No systemd runs on this machine, so the unit's sandboxing (ProtectSystem=,
# SystemCallFilter=, ...) is checked by `systemd-analyze verify` only, not applied.
# If the installed config's listener or metrics port is in use, the broker runs on
# a copy of the config with only those ports changed.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# --- 1. tools ---------------------------------------------------------------------
debs=()
command -v systemd-analyze >/dev/null 2>&1 || debs+=(systemd)
command -v mosquitto_sub >/dev/null 2>&1 || debs+=(mosquitto-clients)
command -v curl >/dev/null 2>&1 || debs+=(curl)
command -v python3 >/dev/null 2>&1 || debs+=(python3)
if [ "${#debs[@]}" -gt 0 ]; then
  echo "installing ${debs[*]} (Debian packages)" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends "${debs[@]}" >/dev/null ||
    { $sudo apt-get update >/dev/null &&
      $sudo apt-get install -y --no-install-recommends "${debs[@]}" >/dev/null; }
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb (crates.io)" >&2
  cargo install --locked cargo-deb
fi

failures=0
ok() { echo "ok    $*"; }
fail() {
  echo "FAIL  $*"
  failures=$((failures + 1))
}

# --- 2. build and install ------------------------------------------------------------
echo "== cargo deb"
deb=$(cargo deb | tail -n 1) || { echo "FAIL: cargo deb (the build failed)"; exit 1; }
[ -f "$deb" ] || { echo "FAIL  cargo deb did not name a package: $deb"; exit 1; }
ok "built $deb"
echo "== dpkg -i"
$sudo dpkg -i --force-confdef --force-confold "$deb"
ok "installed $(dpkg-query -W -f '${Package} ${Version}' shardmq)"

# cargo-deb installs units under /usr/lib; /lib is the same folder on merged-/usr
# systems (Debian 12 and later) and the usual path on older ones.
unit=/lib/systemd/system/shardmq.service
[ -e "$unit" ] || unit=/usr/lib/systemd/system/shardmq.service
for f in /usr/bin/shardmq "$unit" /etc/shardmq/shardmq.toml /usr/share/doc/shardmq/README.md \
  /usr/share/doc/shardmq/grafana-dashboard.json; do
  if [ -e "$f" ]; then ok "installed $f"; else fail "missing $f"; fi
done
if dpkg-query --control-show shardmq conffiles 2>/dev/null | grep -Eq '^ */etc/shardmq/shardmq.toml( |$)'; then
  ok "/etc/shardmq/shardmq.toml is a conffile"
else
  fail "/etc/shardmq/shardmq.toml is not a conffile"
fi

# --- 3. static checks ----------------------------------------------------------------
echo "== systemd-analyze verify $unit"
# verify loads the unit offline and needs no running manager; it fails on unknown
# keys, bad values and commands that are not executable.
if out=$(systemd-analyze verify "$unit" 2>&1) && [ -z "$out" ]; then
  ok "systemd-analyze verify: no complaint"
else
  printf '%s\n' "$out"
  fail "systemd-analyze verify"
fi
systemd-analyze security --offline=true "$unit" 2>/dev/null | tail -n 1 || true

value() { sed -n "s/^$1=//p" "$unit" | tail -n 1; }
user=$(value User)
group=$(value Group)
exec_start=$(value ExecStart)
nofile=$(value LimitNOFILE)
memlock=$(value LimitMEMLOCK)
mapfile -t reloads < <(sed -n 's/^ExecReload=//p' "$unit")
envs=()
while read -r line; do
  read -ra words <<<"$line"
  envs+=("${words[@]}")
done < <(sed -n 's/^Environment=//p' "$unit")
exec_start=${exec_start#[-@+!:]}
read -ra cmd <<<"$exec_start"
if getent passwd "$user" >/dev/null; then
  ok "user $user exists (created by postinst)"
else
  fail "user $user does not exist"
  user=""
fi

config=""
for i in "${!cmd[@]}"; do
  [ "${cmd[$i]}" = "--config" ] && config=${cmd[$((i + 1))]}
done
[ -n "$config" ] || { fail "ExecStart has no --config: $exec_start"; exit 1; }

as_user() {
  if [ -n "$user" ]; then
    $sudo setpriv --reuid="$user" --regid="${group:-$user}" --init-groups --no-new-privs \
      --bounding-set=-all --inh-caps=-all -- "$@"
  else
    "$@"
  fi
}
if as_user /usr/bin/shardmq check-config "$config"; then
  ok "check-config $config (as ${user:-root})"
else
  fail "check-config $config"
fi

# --- 4. run it as the unit would -----------------------------------------------------
tmp=$(mktemp -d)
chmod 0755 "$tmp"
pid=""
notify_pid=""
cleanup() {
  if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  if [ -n "$notify_pid" ]; then kill "$notify_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# The port of each listener in `listeners = [...]` and of metrics_listen; a busy one
# is replaced by a free one in a copy of the config.
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
listen_line=$(grep -E '^listeners *=' "$config" || true)
listen_addr=$(grep -oE '"[^"]+:[0-9]+"' <<<"$listen_line" | head -n 1 | tr -d '"')
[ -n "$listen_addr" ] || { fail "no listeners = [...] in $config"; exit 1; }
metrics_addr=$(sed -nE 's/^metrics_listen *= *"([^"]+)".*/\1/p' "$config")
run_config=$config
port=${listen_addr##*:}
host=${listen_addr%:*}
case "$host" in 0.0.0.0 | "[::]") host=127.0.0.1 ;; esac
changed=()
if port_busy "$port"; then
  new=$(free_port)
  changed+=("listener port $port -> $new (in use)")
  run_config=$tmp/shardmq.toml
  sed -E "/^listeners *=/s/:$port\"/:$new\"/" "$config" >"$run_config"
  port=$new
  listen_addr=${listen_addr%:*}:$port
fi
if [ -n "$metrics_addr" ] && port_busy "${metrics_addr##*:}"; then
  new=$(free_port)
  changed+=("metrics port ${metrics_addr##*:} -> $new (in use)")
  [ "$run_config" = "$config" ] && { cp "$config" "$tmp/shardmq.toml"; run_config=$tmp/shardmq.toml; }
  sed -i -E "/^metrics_listen *=/s/:${metrics_addr##*:}\"/:$new\"/" "$run_config"
  metrics_addr=${metrics_addr%:*}:$new
fi
chmod 0644 "$tmp"/*.toml 2>/dev/null || true
for i in "${!cmd[@]}"; do
  [ "${cmd[$i]}" = "$config" ] && cmd[i]=$run_config
done
if [ "${#changed[@]}" -gt 0 ]; then
  echo "note: running on a copy of $config: ${changed[*]}"
fi

# systemd's side of sd_notify: a datagram socket whose messages are logged to a file.
python3 - "$tmp/notify" "$tmp/notify.log" <<'EOF' &
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o777)
s.settimeout(120)
with open(log, "a", buffering=1) as f:
    f.write("LISTENING\n")
    while True:
        try:
            msg = s.recv(4096).decode(errors="replace")
        except socket.timeout:
            break
        f.write(msg.strip() + "\n")
        if "STOPPING=1" in msg:
            break
EOF
notify_pid=$!
for _ in $(seq 50); do grep -q LISTENING "$tmp/notify.log" 2>/dev/null && break; sleep 0.1; done

echo "== start: ${cmd[*]} (as ${user:-root}, LimitNOFILE=$nofile, LimitMEMLOCK=$memlock)"
limits_note=""
(
  # systemd sets these limits before exec; a container may refuse to raise them.
  ulimit -n "$nofile" 2>/dev/null || echo "note: LimitNOFILE=$nofile refused here; running with $(ulimit -n)" >&2
  ulimit -l "${memlock/infinity/unlimited}" 2>/dev/null || echo "note: LimitMEMLOCK=$memlock refused here; running with $(ulimit -l)" >&2
  exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin NOTIFY_SOCKET="$tmp/notify" "${envs[@]}" \
    setpriv ${user:+--reuid="$user" --regid="${group:-$user}" --init-groups} --no-new-privs \
    --bounding-set=-all --inh-caps=-all -- "${cmd[@]}"
) >"$tmp/broker.log" 2>&1 &
pid=$!
[ -n "$user" ] || limits_note=" (as root: no User= to run as)"

ready=""
for _ in $(seq 300); do
  if grep -q '^READY=1' "$tmp/notify.log" 2>/dev/null; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -n "$ready" ]; then
  ok "READY=1 received (Type=notify)$limits_note"
else
  fail "no READY=1 within 30 s"
  cat "$tmp/broker.log"
  exit 1
fi
grep -q '^note:' "$tmp/broker.log" && grep '^note:' "$tmp/broker.log"
if grep -q 'anonymous clients are accepted on a non-loopback address' "$tmp/broker.log"; then
  ok "warned at start about anonymous access on $listen_addr"
fi

# --- 5. clients, reload, stop --------------------------------------------------------
echo "== clients on $host:$port"
topic="shardmq/package-check/$$"
msg="hello from package.sh $$"
mosquitto_sub -h "$host" -p "$port" -t "$topic" -q 1 -C 1 -W 15 >"$tmp/sub.out" 2>&1 &
sub_pid=$!
# Retained, so the subscriber gets it whether it subscribed before or after.
mosquitto_pub -h "$host" -p "$port" -t "$topic" -q 1 -r -m "$msg"
if wait "$sub_pid" && [ "$(cat "$tmp/sub.out")" = "$msg" ]; then
  ok "mosquitto_sub received what mosquitto_pub sent (QoS 1)"
else
  fail "mosquitto_sub got: $(cat "$tmp/sub.out")"
fi
mosquitto_pub -h "$host" -p "$port" -t "$topic" -q 1 -r -n
# shellcheck disable=SC2016 # $SYS is a topic, not a variable
if version=$(mosquitto_sub -h "$host" -p "$port" -t '$SYS/broker/version' -C 1 -W 20) && [ -n "$version" ]; then
  ok "\$SYS/broker/version: $version"
else
  fail "no \$SYS/broker/version within 20 s"
fi
if [ -n "$metrics_addr" ]; then
  m_host=${metrics_addr%:*}
  case "$m_host" in 0.0.0.0 | "[::]") m_host=127.0.0.1 ;; esac
  if health=$(curl -fsS "http://$m_host:${metrics_addr##*:}/healthz"); then
    ok "/healthz: $health"
  else
    fail "/healthz on $metrics_addr"
  fi
  if metrics=$(curl -fsS "http://$m_host:${metrics_addr##*:}/metrics") &&
    grep -q '^shardmq_connects_total' <<<"$metrics"; then
    ok "/metrics serves shardmq_connects_total"
  else
    fail "/metrics on $metrics_addr"
  fi
fi

echo "== reload (ExecReload=)"
reload_ok=1
for r in "${reloads[@]}"; do
  r=${r#[-@+!:]}
  r=${r//\$MAINPID/$pid}
  r=${r//$config/$run_config}
  read -ra rcmd <<<"$r"
  as_user "${rcmd[@]}" >/dev/null || reload_ok=""
done
reloaded=""
for _ in $(seq 50); do
  grep -q 'SIGHUP: configuration reloaded' "$tmp/broker.log" && { reloaded=1; break; }
  sleep 0.1
done
if [ -n "$reload_ok" ] && [ -n "$reloaded" ] && kill -0 "$pid" 2>/dev/null; then
  ok "reload: $(grep -o 'SIGHUP: configuration reloaded.*' "$tmp/broker.log" | head -n 1)"
else
  fail "reload (ExecReload= ran: ${reload_ok:-no}; broker logged it: ${reloaded:-no})"
fi

echo "== stop (SIGTERM)"
kill -TERM "$pid"
stop_timeout=$(value TimeoutStopSec)
stop_timeout=${stop_timeout:-90}
status=""
for _ in $(seq $((stop_timeout * 10))); do
  if ! kill -0 "$pid" 2>/dev/null; then
    status=0
    wait "$pid" || status=$?
    break
  fi
  sleep 0.1
done
pid_was=$pid
pid=""
if [ "$status" = 0 ]; then
  ok "exited with status 0 after SIGTERM"
elif [ -z "$status" ]; then
  kill -KILL "$pid_was" 2>/dev/null || true
  fail "still running ${stop_timeout} s after SIGTERM (TimeoutStopSec)"
else
  fail "exited with status $status after SIGTERM"
fi
for _ in $(seq 20); do grep -q '^STOPPING=1' "$tmp/notify.log" && break; sleep 0.1; done
if grep -q '^STOPPING=1' "$tmp/notify.log"; then
  ok "STOPPING=1 received"
else
  fail "no STOPPING=1"
fi

echo "== broker log"
grep -v '^note:' "$tmp/broker.log" || true
echo
if [ "$failures" -eq 0 ]; then
  echo "PASS: package built, installed and run as its unit would (package left installed; dpkg -r shardmq removes it)"
else
  echo "FAIL: $failures check(s) failed"
  exit 1
fi
