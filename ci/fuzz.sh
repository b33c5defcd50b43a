#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for SECONDS (default 60), with AddressSanitizer (cargo-fuzz's
# default) and debug assertions (overflow checks) on, and prints the executions per target.
# Each run starts from a scratch copy of the committed seed corpus, so that what the fuzzer adds
# never lands in the tree. A crash fails the script; its input stays in fuzz/artifacts/<target>/
# (ignored by git): minimize it with `cargo +nightly fuzz tmin -a <target> <file>`, then commit
# it under fuzz/regressions/<target>/ with a test in tests/fuzz_corpus.rs.
# Skips, saying so, when no nightly toolchain or no cargo-fuzz is present. The committed corpus
# is also replayed on stable by `cargo test --test fuzz_corpus`.
#
# Usage: ci/fuzz.sh [SECONDS]
#        FUZZ_TARGETS="store_model http_request" ci/fuzz.sh 300
set -uo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
targets="${FUZZ_TARGETS:-store_model store_concurrent http_request http_acl log_recovery}"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: no nightly toolchain on this machine"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: cargo-fuzz is not installed (cargo install cargo-fuzz)"
  exit 0
fi
scratch="$(mktemp -d "${TMPDIR:-/tmp}/caskv-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
failed=0
for t in $targets; do
  mkdir -p "$scratch/$t"
  cp fuzz/corpus/"$t"/* "$scratch/$t/"
  log="$scratch/$t.log"
  echo "fuzz: $t for ${secs}s"
  # -len_control=0: inputs are sequences of operations, and short runs would otherwise spend
  # most of their time on inputs too short to hold more than a few.
  # -detect_leaks=0: the epoch collector frees retired versions later, so after nearly every
  # input more was allocated than freed, and LeakSanitizer would scan the heap each time (about
  # 15 times slower). The targets do not look for leaks; tests/reclaim.rs checks reclamation.
  # ASAN_OPTIONS=detect_leaks=0 turns off the check at exit too: garbage still queued in the
  # collector is held through slot words (a hash tag in the top bits, state bits in the low
  # ones), which LeakSanitizer cannot recognise as pointers, so it would report it as leaked.
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" cargo +nightly fuzz run -a "$t" "$scratch/$t" -- \
    -max_total_time="$secs" -len_control=0 -max_len=4096 -detect_leaks=0 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  if [ "$rc" -eq 0 ]; then
    echo "fuzz: $t: ${execs:-?} executions in ${secs}s, no crash"
  else
    tail -n 80 "$log"
    echo "fuzz: $t: FAILED (exit $rc) after ${execs:-?} executions; input in fuzz/artifacts/$t/"
    failed=1
  fi
done
exit "$failed"
