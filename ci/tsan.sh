#!/usr/bin/env bash
# ThreadSanitizer over the concurrency stress tests and the core unit tests (nightly,
# -Zbuild-std). TSan exits 66 on a race even when every test says ok, so the exit code is what
# decides. Skips, saying so, when no nightly toolchain with rust-src is present.
set -uo pipefail
cd "$(dirname "$0")/.."
target="$(rustc -vV | sed -n 's/^host: //p')"
if ! rustup +nightly component list --installed 2>/dev/null | grep -q '^rust-src'; then
  rustup component add --toolchain nightly rust-src >/dev/null 2>&1 || true
fi
if ! rustup +nightly component list --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "tsan: SKIPPED: no nightly toolchain with rust-src on this machine"
  exit 0
fi
# caskv_sanitize_thread: the epoch collector pins with an RMW instead of a store and a fence
# (TSan cannot see fences), and uses no membarrier.
export RUSTFLAGS="-Zsanitizer=thread --cfg caskv_sanitize_thread"
export RUSTDOCFLAGS="$RUSTFLAGS"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/tsan}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/ci/tsan.supp}"
echo "tsan: building std with ThreadSanitizer for $target (first run takes minutes)"
cargo +nightly test -Zbuild-std --target "$target" --no-default-features --lib --test stress --test watch -- --test-threads 2
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "tsan: FAILED (exit $rc; 66 means a data race was reported)"
  exit "$rc"
fi
echo "tsan: stress tests, watch tests and core unit tests passed with no race reported"
