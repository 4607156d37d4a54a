#!/usr/bin/env bash
# The test command. Installs what the tests compare against when it is missing
# (Debian's mosquitto broker, for the load generator's side-by-side tests and the
# password-file interop tests, and mosquitto-clients: mosquitto_passwd comes with the
# broker, mosquitto_pub with the clients), haproxy and Python's prometheus_client, then runs
# every test in the workspace.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if { [ ! -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null 2>&1; } ||
  ! command -v mosquitto_passwd >/dev/null 2>&1 || ! command -v mosquitto_pub >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing mosquitto and mosquitto-clients (Debian packages) for the tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends mosquitto mosquitto-clients >/dev/null ||
    { $sudo apt-get update >/dev/null &&
      $sudo apt-get install -y --no-install-recommends mosquitto mosquitto-clients >/dev/null; }
fi
# Debian's haproxy sits in front of the broker in tests/proxy_protocol.rs.
if ! [ -x /usr/sbin/haproxy ] && ! command -v haproxy >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing haproxy (Debian package) for the tests" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends haproxy >/dev/null ||
    { $sudo apt-get update >/dev/null &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends haproxy >/dev/null; }
fi
# Python's prometheus_client (PyPI) parses the metrics endpoint in tests/observability.rs.
if ! python3 -c "import prometheus_client" >/dev/null 2>&1; then
  echo "installing prometheus-client (PyPI) for the tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check prometheus-client ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages prometheus-client
fi
exec cargo test --workspace "$@"
