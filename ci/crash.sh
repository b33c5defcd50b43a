#!/usr/bin/env bash
# The kill -9 loop on the real binary, longer than CI's 3 cycles.
# Usage: ci/crash.sh [CYCLES]   (default 60: 20 per fsync policy)
set -euo pipefail
cd "$(dirname "$0")/.."
export CASKV_CRASH_CYCLES="${1:-60}"
start=$(date +%s)
cargo test --release --test crash -- --nocapture
echo "crash: $CASKV_CRASH_CYCLES kill -9 cycles passed in $(( $(date +%s) - start ))s"
