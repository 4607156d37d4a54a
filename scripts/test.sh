#!/usr/bin/env bash
# The test command. Installs what the tests compare against (Debian's mosquitto, for
# the load generator's side-by-side tests) when it is missing, then runs every test
# in the workspace. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing mosquitto (Debian package) for the load generator's tests" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends mosquitto >/dev/null ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends mosquitto >/dev/null; }
fi
exec cargo test --workspace "$@"
