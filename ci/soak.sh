#!/usr/bin/env bash
# Soak: the real server in-process at full load for a fixed time from several client threads
# (GETs, CAS counter increments, batch set-cas, service registrations and heartbeats), then its
# invariants: no lost update, unique and per-key increasing indices, no 5xx, and resident memory
# back near its post-warm-up level once everything is deleted. Prints one line of figures.
# Usage: ci/soak.sh [SECONDS]    (default: $CASKV_SOAK_SECS, else 30)
set -euo pipefail
cd "$(dirname "$0")/.."
export CASKV_SOAK_SECS="${1:-${CASKV_SOAK_SECS:-30}}"
echo "soak: building (release)"
cargo test --release --test soak --no-run
echo "soak: ${CASKV_SOAK_SECS}s of load"
cargo test --release --test soak -- --ignored --nocapture
