#!/usr/bin/env bash
# The soak: full-scale robustness runs (see docs/ROBUSTNESS.md, "Soak").
#
#   scripts/soak.sh [--fuzz] [--quick] [-- <extra args for the test binary>]
#
# Builds the release broker, then runs the ignored tests of tests/soak.rs one at a
# time at full scale: 60 s of stalled subscribers against a separate shardmq process
# (its RSS read from /proc), 10 000 offline persistent sessions, 100 000
# connect/subscribe/disconnect cycles and a takeover storm. Prints a summary made of
# the tests' "SOAK" lines and their results. Scale comes from SOAK_* variables (see
# tests/soak.rs); --quick sets small values for a smoke run of a minute or so.
#
# --fuzz  afterwards, run scripts/fuzz.sh (when present) with its default duration.
#         Off by default: fuzzing is a separate, long, CPU-bound job, and on the same
#         cores it would distort the soak's rates and memory figures.
#
# Honours CARGO_TARGET_DIR. Exits non-zero if a soak test (or, with --fuzz, the
# fuzzing) fails.
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz=0
quick=0
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --fuzz) fuzz=1 ;;
    --quick) quick=1 ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    --)
      shift
      break
      ;;
    *)
      echo "soak.sh: unknown option $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done

if [ "$quick" = 1 ]; then
  export SOAK_STALL_SECS="${SOAK_STALL_SECS:-5}"
  export SOAK_BASELINE_SECS="${SOAK_BASELINE_SECS:-2}"
  export SOAK_OFFLINE_SESSIONS="${SOAK_OFFLINE_SESSIONS:-500}"
  export SOAK_CHURN_CYCLES="${SOAK_CHURN_CYCLES:-2000}"
  export SOAK_STORM_ATTEMPTS="${SOAK_STORM_ATTEMPTS:-300}"
fi

log="$(mktemp -t shardmq-soak.XXXXXX)"
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
t0="$(date +%s)"

echo "soak: building the release broker" >&2
cargo build --release -p shardmq

status=0
cargo test --release -p shardmq --test soak -- --ignored --nocapture --test-threads 1 "$@" \
  2>&1 | tee "$log" || status=$?

fuzz_result="not run (pass --fuzz to run scripts/fuzz.sh)"
if [ "$fuzz" = 1 ]; then
  if [ -f scripts/fuzz.sh ]; then
    echo "soak: running scripts/fuzz.sh with its default duration" >&2
    if bash scripts/fuzz.sh 2>&1 | tee -a "$log"; then
      fuzz_result="scripts/fuzz.sh passed"
    else
      fuzz_result="scripts/fuzz.sh FAILED"
      status=1
    fi
  else
    fuzz_result="skipped: scripts/fuzz.sh does not exist"
  fi
fi

secs=$(($(date +%s) - t0))
changes=""
git diff --quiet HEAD 2>/dev/null || changes=" (with uncommitted changes)"
echo
echo "=== soak summary ==="
echo "command:  scripts/soak.sh ${args[*]:-}"
echo "started:  $started, took ${secs} s"
echo "commit:   $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$changes"
echo "machine:  $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r)"
env | grep '^SOAK_' | sort | sed 's/^/scale:    /' || true
grep -o 'SOAK .*' "$log" | sed 's/^SOAK /  /' || true
failed="$(sed -n '/^failures:$/,/^test result/p' "$log" | grep -E '^    soak_' | sed 's/^ *//' | sort -u | tr '\n' ' ' || true)"
grep -E '^test result' "$log" | sed 's/^/result:   /' || echo "result:   no test result (build failure?)"
[ -z "$failed" ] || echo "failed:   $failed"
echo "fuzzing:  $fuzz_result"
echo "log:      $log"
exit "$status"
