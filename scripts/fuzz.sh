#!/usr/bin/env bash
# Hostile-input fuzzing: runs the libFuzzer targets in fuzz/ (decode: arbitrary bytes
# through the decoder; decode_v5: the same on a 5.0 connection; session: arbitrary packet sequences through the session state
# machine; passwd: arbitrary text as a password file; scram: SCRAM-SHA-512 client
# messages against the broker's side of the exchange; acl: arbitrary text as an ACL
# file, with a client and topics; ws: WebSocket frames; store: a log segment through
# the recovery reader; replay: log records through the state replay; proxy: a PROXY
# protocol header) for SECONDS_PER_TARGET each,
# concurrently when there is a core per target.
# Installs cargo-fuzz if missing. cargo-fuzz passes nightly-only flags to rustc; with
# no nightly toolchain, RUSTC_BOOTSTRAP=1 lets the stable compiler accept them.
#
# Every crash, timeout or out-of-memory input is copied to fuzz/regressions/<target>/,
# which tests/fuzz_regressions.rs replays; fix the bug, then keep the file there. An
# input showing a bug that is not fixed yet goes to fuzz/findings/<target>/ instead.
# The growing corpus stays in fuzz/corpus/<target>/ (not committed), logs in
# fuzz/artifacts/logs/. Exits non-zero if anything was found.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 600)
# Environment: FUZZ_TARGETS (default "decode decode_v5 session passwd scram acl ws store replay proxy"),
# FUZZ_SANITIZER (address or none; default address, falling back to none if that does
# not build).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

SECONDS_PER_TARGET=${1:-600}
TARGETS=${FUZZ_TARGETS:-decode decode_v5 session passwd scram acl ws store replay proxy}
SANITIZER=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

# Builds every target (one cargo invocation each; they share the build).
build() {
  local t
  for t in $TARGETS; do
    cargo fuzz build --sanitizer "$1" "$t" || return 1
  done
}
if ! build "$SANITIZER"; then
  if [ "$SANITIZER" = none ]; then
    exit 1
  fi
  echo "build with --sanitizer $SANITIZER failed; retrying with --sanitizer none" >&2
  SANITIZER=none
  build none
fi

triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release
logs=fuzz/artifacts/logs
mkdir -p "$logs"
marker=$(mktemp)
trap 'rm -f "$marker"' EXIT

# One target: libFuzzer on its corpus, seeded (read-only) by the kept inputs.
run_target() {
  local t=$1
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/regressions/$t"
  "$bin_dir/$t" \
    -max_total_time="$SECONDS_PER_TARGET" \
    -max_len=4096 \
    -timeout=10 \
    -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" \
    "fuzz/corpus/$t" "fuzz/regressions/$t" \
    >"$logs/$t.log" 2>&1
}

echo "fuzzing [$TARGETS] for ${SECONDS_PER_TARGET}s each (sanitizer: $SANITIZER)" >&2
declare -A status
n_targets=$(wc -w <<<"$TARGETS")
if [ "$(nproc)" -ge "$n_targets" ]; then
  declare -A pids
  for t in $TARGETS; do
    run_target "$t" &
    pids[$t]=$!
  done
  for t in $TARGETS; do
    if wait "${pids[$t]}"; then status[$t]=0; else status[$t]=$?; fi
  done
else
  for t in $TARGETS; do
    if run_target "$t"; then status[$t]=0; else status[$t]=$?; fi
  done
fi

# The last value of a libFuzzer status field ("cov:", "ft:") in a log.
last_field() {
  grep -oE "$1 [0-9]+" "$2" | tail -n 1 | awk '{print $2}'
}
stat_value() {
  sed -n "s/^stat::$1: *//p" "$2" | tail -n 1
}

found=0
printf '\n%-8s %12s %8s %8s %6s %7s %8s %8s\n' \
  target runs exec/s corpus cov ft rss_mb crashes
for t in $TARGETS; do
  log=$logs/$t.log
  crashes=0
  while IFS= read -r -d '' f; do
    cp "$f" "fuzz/regressions/$t/"
    echo "$t: kept $(basename "$f") in fuzz/regressions/$t/" >&2
    crashes=$((crashes + 1))
  done < <(find "fuzz/artifacts/$t" -maxdepth 1 -type f \
    \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) \
    -newer "$marker" -print0)
  if [ "${status[$t]}" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    echo "$t: libFuzzer exited with ${status[$t]} and left no input; see $log" >&2
    crashes=1
  fi
  [ "$crashes" -eq 0 ] || found=1
  printf '%-8s %12s %8s %8s %6s %7s %8s %8s\n' "$t" \
    "$(stat_value number_of_executed_units "$log")" \
    "$(stat_value average_exec_per_sec "$log")" \
    "$(find "fuzz/corpus/$t" -type f | wc -l)" \
    "$(last_field cov: "$log")" "$(last_field ft: "$log")" \
    "$(stat_value peak_rss_mb "$log")" "$crashes"
done
echo "(runs and exec/s from libFuzzer's final stats; corpus = files in fuzz/corpus/<target>;" \
  "cov = edges covered, ft = features; logs in $logs/)"
exit "$found"
