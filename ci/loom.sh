#!/usr/bin/env bash
# Runs the loom models in loom-tests/ against the real cell and batch code.
# Usage: ci/loom.sh            (CI bound: LOOM_MAX_PREEMPTIONS=2)
#        LOOM_MAX_PREEMPTIONS=3 ci/loom.sh   (a deeper search, by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg caskv_loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
# A separate target dir: the cfg flags would otherwise rebuild the main one every time.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"
echo "loom: LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS"
start=$(date +%s)
cargo test -p caskv-loom-tests --release --tests
echo "loom: models passed in $(( $(date +%s) - start ))s (build included)"
