#!/usr/bin/env bash
# The crash test: what the broker acknowledged survives kill -9 (the acceptance test
# of persistence).
#
#   scripts/crash-test.sh [--no-build] [--rounds N] [--seed S] [--fsync MODE]
#                         [--fsync-interval-ms N] [--compact BYTES] [--shared] [--keep]
#                         [-- <extra args for the helper>]
#
# Builds the release broker (unless --no-build), then for N rounds (default 20) starts
# `target/release/shardmq --listen 127.0.0.1:PORT --shards 2 --data-dir DIR --fsync MODE`
# (MODE always by default; a fresh free port each start; also --max-queued-messages
# and --max-queued-bytes high enough that no session queue overflows, and
# --sys-interval 0) on one data directory, runs MQTT 3.1.1 load with Eclipse
# paho-mqtt (scripts/crash/crash_test.py) for a random 1-4 s and kills the broker with
# SIGKILL in the middle of it. Two publishers send at QoS 1 and two at QoS 2 (payload
# "pubid:seq" to crash/<pubid>; the first QoS 1 one also sends retained messages to
# crash/retained/<pubid>), each at most 500 messages a second and 20 in flight; a
# message counts as acknowledged only once its PUBACK or PUBCOMP arrived (a new
# clean-session client per round, so nothing unacknowledged is ever sent again; the
# numbering goes on across rounds). Four persistent subscribers
# (clean_session=False, client ids crash-sub-0..3) hold crash/# at QoS 2: two stay
# online through the rounds, two subscribe once at the start and stay away. After the
# last round the broker starts once more, every subscriber reconnects and drains its
# session, and the test checks that
#   - every acknowledged QoS 1 message reached every subscriber at least once,
#   - every acknowledged QoS 2 message reached every subscriber exactly once (a QoS 2
#     duplicate of any message fails),
#   - each subscriber found its session present after every restart,
#   - each retained topic holds a seq no lower than the last acknowledged one,
#   - every broker start succeeded (recovery included).
# With --shared, five more persistent clients (crash-shm-0..4) form the shared group
# $share/crash/crash/# at QoS 2: two stay online through the rounds, two also
# disconnect (DISCONNECT, back after 0.1-1 s) or have their connection cut at random
# moments during the load, and one leaves at a random moment of a random round in the
# first half and comes back only for the final drain. The check, summed over the
# members: every acknowledged QoS 1 message reached the group at least once (the
# duplicates are counted and reported), every acknowledged QoS 2 message exactly once
# (a QoS 2 duplicate fails), and each member found its session present whenever it
# reconnected.
# Prints a summary and exits 0 when all hold, 1 otherwise, 2 when the broker has no
# --data-dir/--fsync flags yet (or on a usage error).
#
# The work directory (data/, logs/round-NN.log with each run's broker output) is a
# fresh temporary one (under TMPDIR, /tmp by default); it is removed at the end
# unless --keep is given or the test failed. Installs paho-mqtt from PyPI when
# `import paho.mqtt` fails. Honours CARGO_TARGET_DIR. Takes about 2 minutes for 20
# rounds.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
keep=0
rounds=20
seed=""
fsync=always
fsync_interval=""
# --compact BYTES: --log-compaction-bytes for the broker, so that the log is
# compacted (clients paused, the state rewritten) again and again under the load.
compact=""
# --shared: a shared-subscription group of persistent members as well.
shared=0
# Development only (not in the usage above): --no-persistence starts the broker
# without --data-dir/--fsync, so that the checker can be tried on a broker that
# loses everything at a crash (losses expected); --stop term|none ends rounds with
# SIGTERM or not at all instead of SIGKILL (with --no-persistence and --stop none
# the run must pass: that checks the checker for false alarms).
persist=1
stop="kill"
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    --rounds) rounds="${2:?--rounds needs a number}"; shift ;;
    --seed) seed="${2:?--seed needs a number}"; shift ;;
    --fsync) fsync="${2:?--fsync needs always, interval or never}"; shift ;;
    --fsync-interval-ms) fsync_interval="${2:?--fsync-interval-ms needs a number}"; shift ;;
    --compact) compact="${2:?--compact needs a byte count}"; shift ;;
    --shared) shared=1 ;;
    --no-persistence) persist=0 ;;
    --stop) stop="${2:?--stop needs kill, term or none}"; shift ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    --)
      shift
      break
      ;;
    *)
      echo "crash-test.sh: unknown option $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done
case "$fsync" in always | interval | never) ;; *)
  echo "crash-test.sh: --fsync must be always, interval or never" >&2
  exit 2
  ;;
esac
case "$stop" in kill | term | none) ;; *)
  echo "crash-test.sh: --stop must be kill, term or none" >&2
  exit 2
  ;;
esac

target="${CARGO_TARGET_DIR:-target}"
broker="$target/release/shardmq"
if [ "$build" = 1 ]; then
  echo "crash-test: building the release broker" >&2
  cargo build --release -q
fi
if [ ! -x "$broker" ]; then
  echo "crash-test: $broker not found (build it, or drop --no-build)" >&2
  exit 2
fi

helper_args=(--rounds "$rounds" --fsync "$fsync" --stop "$stop")
[ -n "$seed" ] && helper_args+=(--seed "$seed")
[ -n "$fsync_interval" ] && helper_args+=(--fsync-interval-ms "$fsync_interval")
[ -n "$compact" ] && helper_args+=(--log-compaction-bytes "$compact")
[ "$shared" = 1 ] && helper_args+=(--shared)
if [ "$persist" = 1 ]; then
  help_text="$("$broker" --help)"
  missing=""
  for flag in --data-dir --fsync; do
    grep -q -- "$flag" <<<"$help_text" || missing="$missing $flag"
  done
  if [ -n "$fsync_interval" ] && ! grep -q -- --fsync-interval-ms <<<"$help_text"; then
    missing="$missing --fsync-interval-ms"
  fi
  if [ -n "$missing" ]; then
    echo "crash-test: $broker does not accept$missing: persistence is not there yet, nothing to test" >&2
    exit 2
  fi
else
  helper_args+=(--no-persistence)
  echo "crash-test: --no-persistence: the broker runs without a data directory, losses are expected" >&2
fi

# paho-mqtt 2 or later (CallbackAPIVersion).
if ! python3 -c 'import paho.mqtt.client as m; m.CallbackAPIVersion' 2>/dev/null; then
  echo "crash-test: installing paho-mqtt" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2' ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages 'paho-mqtt>=2'
fi

work="$(mktemp -d -t shardmq-crash.XXXXXX)"
pidfile="$work/broker.pid"
status=0
helper=""
# shellcheck disable=SC2317 # called by the traps
cleanup() {
  # Interrupted: the helper stops its broker and prints what it has on SIGTERM.
  if [ -n "$helper" ] && kill -0 "$helper" 2>/dev/null; then
    kill -TERM "$helper" 2>/dev/null || true
    wait "$helper" 2>/dev/null || true
  fi
  # A broker left by a helper that died.
  if [ -s "$pidfile" ]; then
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  fi
  if [ "$keep" = 1 ] || [ "$status" != 0 ]; then
    echo "crash-test: kept $work (data/, logs/)" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'status=130; exit 130' INT
trap 'status=143; exit 143' TERM

python3 scripts/crash/crash_test.py --broker "$broker" --work-dir "$work" --pidfile "$pidfile" \
  "${helper_args[@]}" "$@" &
helper=$!
wait "$helper" || status=$?
helper=""
exit "$status"
